//! Placeholder: this file's tests are being written.
