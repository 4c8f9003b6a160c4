//! Every peer-to-peer message decoder (gossip: adverts, tasks, votes; request-response;
//! history records as stored): arbitrary bytes never panic, and whatever decodes is
//! validated and encodes back to the same bytes (the codec is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyagent_protocol::codec::MAX_FRAME_BYTES;
use pyagent_protocol::history::HistoryRecord;
use pyagent_protocol::rpc::{RpcRequest, RpcResponse};
use pyagent_protocol::task::TaskMessage;
use pyagent_protocol::vote::VoteMessage;
use pyagent_protocol::{Advert, decode, encode};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    let value: T = decode(data, MAX_FRAME_BYTES).ok()?;
    let again = encode(&value).expect("a decoded value encodes");
    assert_eq!(again, data, "decoding then encoding must give the same frame");
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    if let Some(advert) = round_trip::<Advert>(data) {
        let _ = advert.validate("12D3KooWfuzz");
    }
    if let Some(message) = round_trip::<TaskMessage>(data) {
        let _ = message.validate("12D3KooWfuzz");
    }
    if let Some(message) = round_trip::<VoteMessage>(data) {
        let _ = message.validate("12D3KooWfuzz");
    }
    let _ = round_trip::<RpcRequest>(data);
    let _ = round_trip::<RpcResponse>(data);
    let _ = round_trip::<HistoryRecord>(data);
});
