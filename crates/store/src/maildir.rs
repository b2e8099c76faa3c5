//! Maildir import and export.
