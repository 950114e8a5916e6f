//! The driver conformance suite (filled in below).
