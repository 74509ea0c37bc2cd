//! The test stack itself: the servers start and deliver (a failure here explains the others).

use crate::support::MailStack;

/// Dovecot and Postfix start, and the stack's users are independent mailboxes.
#[test]
fn stack_starts() {
    let stack = MailStack::get();
    let user = stack.user("stack_starts");
    assert!(stack.delivered(&user).is_empty());
}
