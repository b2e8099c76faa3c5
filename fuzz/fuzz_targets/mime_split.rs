//! Any bytes as a message: the store's split into inline pieces and large
//! parts must reassemble to exactly the input, and the IMAP server's MIME
//! views (BODYSTRUCTURE, ENVELOPE, sections, header search) must never panic
//! or overflow the stack. The first byte picks the part threshold, so small
//! inputs still exercise splitting.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_model::BlobId;
use starling_store::blob::{split, Piece};

fuzz_target!(|data: &[u8]| {
    let Some((&t, raw)) = data.split_first() else { return };
    let threshold = 1 + t as usize;
    let (record, parts) = split(raw, threshold);
    assert_eq!(record.len, raw.len() as u64);
    let mut whole = Vec::with_capacity(raw.len());
    for piece in &record.pieces {
        match piece {
            Piece::Inline(b) => whole.extend_from_slice(b),
            Piece::Part { id, len } => {
                let (_, bytes) = parts.iter().find(|(p, _)| p == id).expect("a referenced part is stored");
                assert_eq!(*len, bytes.len() as u64);
                assert_eq!(BlobId::of(bytes), *id);
                whole.extend_from_slice(bytes);
            }
        }
    }
    assert_eq!(whole, raw, "reassembly is byte-exact");
    let mut out = Vec::new();
    starling_imap::mime::body_structure(raw, true, &mut out);
    starling_imap::mime::envelope(raw, &mut out);
    let _ = starling_imap::mime::header_values(raw, "from");
    let _ = starling_imap::mime::text_contains(raw, "needle", true);
    let _ = starling_imap::mime::sent_date(raw);
});
