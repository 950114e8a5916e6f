//! The envelope and request decoders (`codec::decode_body`, `codec::decode_request`) on
//! arbitrary bytes: never panic; a decoded request re-encodes (both encoders give the same
//! bytes) and decodes back to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oslo_core::codec::{self, CallFields};

fuzz_target!(|data: &[u8]| {
    let Ok(map) = codec::decode_body(data) else { return };

    // The decoded dict survives an envelope round trip unchanged.
    let enveloped = codec::encode_envelope(&map).expect("a decoded dict encodes");
    assert_eq!(codec::decode_body(&enveloped).expect("re-decodes"), map);

    let request = codec::decode_request(map);
    let unique_id = request.unique_id.clone().unwrap_or_default();
    let call = match (&request.msg_id, &request.reply_q) {
        (Some(msg_id), Some(reply_q)) => Some(CallFields {
            msg_id,
            reply_q,
            call_monitor_timeout: request.client_timeout,
        }),
        _ => None,
    };
    let dict = codec::encode_request(&request.message, &request.context, call.as_ref(), &unique_id);
    let body = codec::encode_envelope(&dict).expect("encodes");
    let direct = codec::encode_request_body(&request.message, &request.context, call.as_ref(), &unique_id, true).expect("encodes");
    assert_eq!(direct, body, "the two encoders agree");
    let plain = codec::encode_request_body(&request.message, &request.context, call.as_ref(), &unique_id, false).expect("encodes");
    assert_eq!(plain, codec::encode_plain(&dict).expect("encodes"));

    let again = codec::decode_request(codec::decode_body(&body).expect("our own body decodes"));
    assert_eq!(again.message, request.message);
    assert_eq!(again.context, request.context);
    assert_eq!(again.unique_id.as_deref(), Some(unique_id.as_str()));
    if call.is_some() {
        assert_eq!(again.msg_id, request.msg_id);
        assert_eq!(again.reply_q, request.reply_q);
        assert_eq!(again.client_timeout.is_some(), request.client_timeout.is_some());
    }
});
