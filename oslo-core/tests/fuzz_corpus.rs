//! The committed fuzz seed corpus (`fuzz/corpus/`, written by `fuzz/seed_corpus.py`) replayed
//! through the invariants of the `request_body` and `reply_body` fuzz targets on every
//! `cargo test`, without libFuzzer: a seed that breaks them fails here before anyone fuzzes.

use std::path::PathBuf;

use oslo_core::codec::{self, CallFields, Reply};
use oslo_core::RemoteError;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            (path.display().to_string(), std::fs::read(&path).expect("seed"))
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() > 10, "{} holds the seeds", dir.display());
    seeds
}

/// `fuzz_targets/request_body.rs`; true when the body decoded.
fn request_body(data: &[u8]) -> bool {
    let Ok(map) = codec::decode_body(data) else { return false };
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
    true
}

/// `fuzz_targets/reply_body.rs`; true when the reply decoded.
fn reply_body(data: &[u8]) -> bool {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(remote) = RemoteError::from_failure_json(text) {
            let _ = (remote.traceback(), remote.clone().into_error().to_string());
            let back = RemoteError::from_failure_json(&remote.to_failure_json()).expect("our own failure JSON reads");
            assert_eq!(back, remote);
        }
    }
    let Ok(map) = codec::decode_body(data) else { return false };
    let Ok(reply) = Reply::from_map(map) else { return false };
    let _ = reply.is_heartbeat();
    let body = reply.encode().expect("a decoded reply encodes");
    assert_eq!(
        body,
        codec::encode_envelope(&reply.to_map()).expect("encodes"),
        "the two encoders agree"
    );
    let again = Reply::from_map(codec::decode_body(&body).expect("our own reply decodes")).expect("reads");
    assert_eq!(again, reply);
    true
}

#[test]
fn request_seeds_keep_the_fuzz_invariants() {
    let mut decoded = 0;
    for (name, data) in seeds("request_body") {
        let ok = std::panic::catch_unwind(|| request_body(&data)).unwrap_or_else(|_| panic!("seed {name} breaks an invariant"));
        decoded += usize::from(ok);
    }
    assert!(decoded >= 15, "most seeds are valid bodies ({decoded})");
}

#[test]
fn reply_seeds_keep_the_fuzz_invariants() {
    let mut decoded = 0;
    for (name, data) in seeds("reply_body") {
        let ok = std::panic::catch_unwind(|| reply_body(&data)).unwrap_or_else(|_| panic!("seed {name} breaks an invariant"));
        decoded += usize::from(ok);
    }
    assert!(decoded >= 8, "most seeds are valid replies ({decoded})");
}

#[test]
fn python_written_value_seeds_decode_and_come_back_byte_for_byte() {
    // The seeds seed_corpus.py wrote with json.dumps (Python's own bytes) for the
    // "values that survive exactly" cases: decoding and re-encoding gives them back unchanged.
    let mut found = 0;
    for (name, data) in seeds("request_body").into_iter().chain(seeds("reply_body")) {
        let text = String::from_utf8_lossy(&data);
        let interesting = ["NaN", "Infinity", "18446744073709551617"].iter().any(|word| text.contains(word));
        if !interesting || !text.starts_with("{\"oslo.version\": \"2.0\", \"oslo.message\": \"{") {
            continue;
        }
        let Ok(map) = codec::decode_body(&data) else { continue };
        found += 1;
        assert_eq!(String::from_utf8(codec::encode_envelope(&map).unwrap()).unwrap(), text, "{name}");
    }
    assert!(found >= 6, "the value seeds are in the corpus ({found})");
}

#[test]
fn mutated_seeds_keep_the_fuzz_invariants() {
    // A cheap stand-in for a fuzzing run on every `cargo test` (no coverage guidance): each seed
    // with bytes inserted, removed or replaced, favouring the ones JSON and the Python number
    // tokens are made of.
    const ALPHABET: &[u8] = b"{}[]:,\"\\ -+.eE019NaInfityrulsf\x00\x1f\xc3\xa9\xff";
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut cases = 0;
    for (target, check) in [("request_body", request_body as fn(&[u8]) -> bool), ("reply_body", reply_body)] {
        for (name, seed) in seeds(target) {
            for _ in 0..300 {
                let mut data = seed.clone();
                for _ in 0..1 + next(4) {
                    let at = next(data.len() + 1);
                    let byte = ALPHABET[next(ALPHABET.len())];
                    match next(3) {
                        0 => data.insert(at, byte),
                        1 if at < data.len() => {
                            data.remove(at);
                        }
                        _ if at < data.len() => data[at] = byte,
                        _ => data.push(byte),
                    }
                }
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(
                    outcome.is_ok(),
                    "{target} invariant broken by a mutation of {name}: {:?}",
                    String::from_utf8_lossy(&data)
                );
                cases += 1;
            }
        }
    }
    assert!(cases > 10_000);
}
