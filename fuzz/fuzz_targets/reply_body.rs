//! The reply decoder (`codec::decode_body` + `Reply::from_map`, which also reads the remote
//! failure JSON) on arbitrary bytes: never panics; a decoded reply re-encodes and decodes back
//! to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oslo_core::codec::{self, Reply};
use oslo_core::RemoteError;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(remote) = RemoteError::from_failure_json(text) {
            let _ = (remote.traceback(), remote.clone().into_error().to_string());
            let back = RemoteError::from_failure_json(&remote.to_failure_json()).expect("our own failure JSON reads");
            assert_eq!(back, remote);
        }
    }
    let Ok(map) = codec::decode_body(data) else { return };
    let Ok(reply) = Reply::from_map(map) else { return };
    let _ = reply.is_heartbeat();
    let body = reply.encode().expect("a decoded reply encodes");
    assert_eq!(
        body,
        codec::encode_envelope(&reply.to_map()).expect("encodes"),
        "the two encoders agree"
    );
    let again = Reply::from_map(codec::decode_body(&body).expect("our own reply decodes")).expect("reads");
    assert_eq!(again, reply);
});
