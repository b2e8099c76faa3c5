//! Commands in a file each (Stalwart's `op/`): the session dispatches to
//! them. The older commands still live in `session.rs` and `selected.rs`.

pub(crate) mod append;
pub(crate) mod cancelupdate;
pub(crate) mod catenate;
pub(crate) mod close;
pub(crate) mod compress;
pub(crate) mod copy;
pub(crate) mod create;
pub(crate) mod delete;
pub(crate) mod expunge;
pub(crate) mod fetch;
pub(crate) mod list;
pub(crate) mod notify;
pub(crate) mod quota;
pub(crate) mod rename;
pub(crate) mod search;
pub(crate) mod select;
pub(crate) mod sort;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod subscribe;
pub(crate) mod thread;
