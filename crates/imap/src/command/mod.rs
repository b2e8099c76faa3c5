//! Commands in a file each (Stalwart's `op/`): `Session::command` in
//! `session.rs` dispatches to them. The small ones (CAPABILITY, NOOP,
//! CHECK, LOGOUT, STARTTLS, NAMESPACE, ID: a few lines each) share
//! `simple.rs`. What the message commands share (the selected mailbox's
//! state, its updates, UID ranges and sets) is in `selected.rs`; what every
//! command may use (output, the store, mailbox names) in `session.rs`.

pub(crate) mod append;
pub(crate) mod cancelupdate;
pub(crate) mod catenate;
pub(crate) mod close;
pub(crate) mod compress;
pub(crate) mod copy;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod enable;
pub(crate) mod expunge;
pub(crate) mod fetch;
pub(crate) mod idle;
pub(crate) mod list;
pub(crate) mod login;
pub(crate) mod notify;
pub(crate) mod quota;
pub(crate) mod rename;
pub(crate) mod search;
pub(crate) mod select;
pub(crate) mod simple;
pub(crate) mod sort;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod subscribe;
pub(crate) mod thread;
