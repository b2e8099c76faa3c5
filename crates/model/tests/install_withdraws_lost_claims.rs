//! A snapshot installed into a replica that holds an own claim the
//! snapshot shows losing (another replica's message placed and shown at
//! that UID) withdraws it at the install, as applying the ops would have.
//! Left, the replica withdrew it later, at whatever next touched the UID —
//! with burying on, an expunge there, and with it off, nothing: burying
//! changed the ops a replica made. The history is the one the property
//! test `burying_changes_nothing_a_client_sees` shrank to.

#[allow(dead_code)]
mod history;
use history::Action::*;
use history::*;
use starling_model::ReplicaOptions;

#[test]
fn an_install_withdraws_own_claims_it_shows_lost_with_burying_on_or_off() {
    let actions = [
        Flags { r: 0, msg: 0, add: 0, remove: 0 },
        Append { r: 7, mb: 0, flags: 0 },
        Look { r: 61, mb: 0 },
        Flags { r: 30, msg: 0, add: 0, remove: 0 },
        Append { r: 126, mb: 0, flags: 0 },
        Deliver { from: 1, to: 2, pick: 104, dup: false },
        Flags { r: 0, msg: 0, add: 0, remove: 0 },
        Flags { r: 0, msg: 0, add: 0, remove: 0 },
        Look { r: 19, mb: 0 },
        Copy { r: 0, msg: 0, mb: 0 },
        Deliver { from: 133, to: 6, pick: 0, dup: false },
        Append { r: 5, mb: 0, flags: 0 },
        Flags { r: 0, msg: 0, add: 0, remove: 0 },
        Rename { r: 0, mb: 0, name: 0 },
        Look { r: 19, mb: 0 },
        Create { r: 0, name: 0 },
        Create { r: 0, name: 0 },
        Flags { r: 0, msg: 0, add: 0, remove: 0 },
        Look { r: 71, mb: 0 },
        Flags { r: 0, msg: 0, add: 0, remove: 0 },
        Look { r: 0, mb: 85 },
        // Replica 0 installs replica 1's state: its own claim at UID 2
        // loses there to replica 1's message, shown.
        Install { from: 161, to: 188 },
        Create { r: 0, name: 0 },
        Copy { r: 14, msg: 0, mb: 0 },
        // The message at UID 2 expunged: burying spends the UID.
        Expunge { r: 44, msg: 43471 },
    ];
    let keep_withdrawn = ReplicaOptions { drop_withdrawn: false, ..Default::default() };
    let none = ReplicaOptions { bury: false, drop_withdrawn: false, ..Default::default() };
    same_traces(2, &actions, keep_withdrawn, none).expect("burying changes no op");
    same_traces(2, &actions, ReplicaOptions::default(), keep_withdrawn)
        .expect("dropping withdrawn claims changes no op");
    run(2, &actions).expect("invariants hold");
}
