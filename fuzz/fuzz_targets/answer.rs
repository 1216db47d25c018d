//! Composio's answer (status and body, any bytes) into a verdict: never a panic,
//! always 200 (a session), 401/403 (a refusal) or 503 (undecided).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = 100 + u16::from_be_bytes(*status) % 500;
    let answered = composio_auth::fuzzing::classify(status, body);
    assert!(
        [200, 401, 403, 503].contains(&answered),
        "{status} -> {answered}"
    );
    assert!(answered != 200 || status == 200);
});
