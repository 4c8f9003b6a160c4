//! The local API's request parser: any frame gets a request or an error reply, never a
//! panic; an error reply is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyagent_protocol::api::{parse_request, request_id};

fuzz_target!(|data: &[u8]| {
    let _ = request_id(data);
    if let Err(e) = parse_request(data) {
        let reply = e.to_reply();
        serde_json::from_slice::<serde_json::Value>(&reply).expect("error replies are JSON");
    }
});
