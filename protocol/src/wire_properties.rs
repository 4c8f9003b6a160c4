//! Property tests of the codec over every message type that crosses the wire or is stored:
//! arbitrary bytes never panic the decoder, and every message round-trips exactly.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::advert::{Advert, Capacity, GpuInfo, InferenceCapacity, MAX_ADVERT_BYTES};
use crate::codec::{self, MAX_FRAME_BYTES};
use crate::history::{Entry, EntryBody, HistoryEvent};
use crate::rpc::{BlobData, BlobsResponse, GetBlobs, HelloRequest, HelloResponse, MemberAddrs, ResultAck, TaskResult};
use crate::swarm::VersionRange;
use crate::task::{BlobId, FileRef, TaskId, TaskMessage, TaskOutcome, TaskSpec};
use crate::vote::{Ballot, ProposalKind, ProposalSpec, VoteChoice, VoteMessage, VoteMethod};

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including control characters and NUL: the codec must not care.
    ".{0,24}"
}

fn hash() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn versions() -> impl Strategy<Value = VersionRange> {
    (1u16..=u16::MAX, 0u16..=16).prop_map(|(min, extra)| VersionRange::new(min, min.saturating_add(extra)).unwrap_or(VersionRange::SUPPORTED))
}

fn capacity() -> impl Strategy<Value = Capacity> {
    let gpu = (text(), any::<u64>(), any::<u64>()).prop_map(|(name, vram_total_bytes, vram_free_bytes)| GpuInfo { name, vram_total_bytes, vram_free_bytes });
    let load = (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<bool>());
    let kv = (any::<u32>(), any::<u8>(), vec(any::<u8>(), 0..64), proptest::sample::select(crate::InferenceRole::ALL.to_vec()), text())
        .prop_map(|(blocks, hashes, bits, role, compute)| (crate::kv::KvSummary { blocks, hashes, bits }, role, compute));
    let inference = (text(), text(), any::<u64>(), any::<u64>(), any::<bool>(), any::<u32>(), any::<u32>(), load, text(), kv).prop_map(
        |(name, model_id, model_bytes, kv_budget_bytes, fits, prefill_tokens_per_s, decode_tokens_per_s, load, provider, (kv_blocks, role, compute))| InferenceCapacity {
            name,
            provider,
            model_id,
            context_length: load.4,
            chat: load.5,
            queued_requests: load.0,
            queued_prefill_tokens: load.1,
            queued_decode_tokens: load.2,
            kv_free_bytes: load.3,
            model_bytes,
            kv_budget_bytes,
            fits,
            prefill_tokens_per_s,
            decode_tokens_per_s,
            kv_blocks,
            role,
            compute,
        },
    );
    (any::<u32>(), any::<u64>(), any::<u64>(), vec(gpu, 0..3), vec(inference, 0..3)).prop_map(
        |(cpus, ram_total_bytes, ram_available_bytes, gpus, models)| Capacity { cpus, ram_total_bytes, ram_available_bytes, gpus, models },
    )
}

fn advert() -> impl Strategy<Value = Advert> {
    (versions(), text(), text(), vec(text(), 0..4), vec(text(), 0..4), vec(text(), 0..4), capacity(), any::<[u64; 3]>()).prop_map(
        |(protocol_versions, peer_id, node_version, listen_addrs, agents, capabilities, capacity, [uptime_secs, boot_id, seq])| Advert {
            protocol_versions,
            peer_id,
            node_version,
            listen_addrs,
            agents,
            capabilities,
            capacity,
            uptime_secs,
            boot_id,
            seq,
        },
    )
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    let file = (text(), hash(), any::<u64>()).prop_map(|(path, blob, size)| FileRef { path, blob: BlobId(blob), size });
    (text(), vec(file, 0..4), text(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
        |(capability, files, requester, created_unix_ms, nonce, lease_ms)| TaskSpec { capability, files, requester, created_unix_ms, nonce, lease_ms },
    )
}

fn task_message() -> impl Strategy<Value = TaskMessage> {
    prop_oneof![
        task_spec().prop_map(TaskMessage::Submit),
        (hash(), text()).prop_map(|(t, executor)| TaskMessage::Claim { task: TaskId(t), executor }),
        (hash(), text()).prop_map(|(t, requester)| TaskMessage::Done { task: TaskId(t), requester }),
    ]
}

fn outcome() -> impl Strategy<Value = TaskOutcome> {
    prop_oneof![
        text().prop_map(|result_json| TaskOutcome::Completed { result_json }),
        text().prop_map(|reason| TaskOutcome::Failed { reason }),
    ]
}

fn get_blobs() -> impl Strategy<Value = GetBlobs> {
    vec(hash().prop_map(BlobId), 0..4).prop_map(|ids| GetBlobs { ids })
}

fn task_result() -> impl Strategy<Value = TaskResult> {
    (hash(), outcome()).prop_map(|(t, outcome)| TaskResult { task: TaskId(t), outcome })
}

fn hello_response() -> impl Strategy<Value = HelloResponse> {
    let member = (text(), vec(text(), 0..3)).prop_map(|(peer_id, listen_addrs)| MemberAddrs { peer_id, listen_addrs });
    (advert(), vec(member, 0..3)).prop_map(|(advert, members)| HelloResponse { advert: Box::new(advert), members })
}

fn blobs_response() -> impl Strategy<Value = BlobsResponse> {
    let blob = (hash(), vec(any::<u8>(), 0..64)).prop_map(|(id, bytes)| BlobData { id: BlobId(id), bytes });
    prop_oneof![vec(blob, 0..3).prop_map(BlobsResponse::Blobs), text().prop_map(BlobsResponse::Error)]
}

fn vote_method() -> impl Strategy<Value = VoteMethod> {
    prop_oneof![
        Just(VoteMethod::Plurality),
        Just(VoteMethod::Approval),
        Just(VoteMethod::Borda),
        Just(VoteMethod::InstantRunoff),
        Just(VoteMethod::Schulze),
        any::<u64>().prop_map(|credits| VoteMethod::Quadratic { credits }),
        vec((text(), any::<u64>()), 0..3).prop_map(|weights| VoteMethod::TrustWeighted { weights }),
    ]
}

fn vote_message() -> impl Strategy<Value = VoteMessage> {
    let kind = prop_oneof![
        Just(ProposalKind::General),
        (text(), vec(text(), 0..3)).prop_map(|(function, candidates)| ProposalKind::Review { function, candidates }),
    ];
    let spec = (text(), kind, vec(text(), 0..4), vote_method(), text(), any::<[u64; 3]>(), option::of(any::<u32>())).prop_map(
        |(title, kind, options, method, proposer, [created_unix_ms, deadline_unix_ms, nonce], quorum)| ProposalSpec {
            title,
            kind,
            options,
            method,
            proposer,
            created_unix_ms,
            deadline_unix_ms,
            quorum,
            nonce,
        },
    );
    prop_oneof![spec.prop_map(VoteMessage::Propose), ballot().prop_map(VoteMessage::Ballot)]
}

fn ballot() -> impl Strategy<Value = Ballot> {
    let choice = prop_oneof![
        vec(any::<u16>(), 0..4).prop_map(VoteChoice::Ranking),
        vec(any::<u16>(), 0..4).prop_map(VoteChoice::Approval),
        vec((any::<u16>(), any::<u64>()), 0..4).prop_map(VoteChoice::Quadratic),
    ];
    (hash(), text(), option::of(text()), choice, any::<u64>(), vec(any::<u8>(), 0..64)).prop_map(
        |(p, voter, agent, choice, cast_unix_ms, signature)| Ballot { proposal: TaskId(p), voter, agent, choice, cast_unix_ms, signature },
    )
}

fn history_entry() -> impl Strategy<Value = Entry> {
    let event = prop_oneof![
        (text(), any::<usize>(), text()).prop_map(|(capability, files, requester)| HistoryEvent::Submitted { capability, files, requester }),
        text().prop_map(|executor| HistoryEvent::Assigned { executor }),
        (text(), any::<bool>(), text()).prop_map(|(executor, completed, detail)| HistoryEvent::Result { executor, completed, detail }),
        Just(HistoryEvent::Done),
        ballot().prop_map(|b| HistoryEvent::Ballot(Box::new(b))),
        option::of(text()).prop_map(|winner| HistoryEvent::Tally { winner }),
        (text(), text()).prop_map(|(model, detail)| HistoryEvent::Inference { model, detail }),
    ];
    (text(), any::<u64>(), hash(), event, vec(any::<u8>(), 0..80)).prop_map(|(author, author_unix_ms, subject, event, signature)| Entry {
        body: EntryBody { author, author_unix_ms, subject: TaskId(subject), event },
        signature,
    })
}

fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T, limit: usize) -> Result<(), TestCaseError> {
    let frame = codec::encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(frame[0], codec::CODEC_VERSION);
    let back: T = codec::decode(&frame, limit).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, value);
    // Every strict prefix is refused (never a panic, never a silently shorter message).
    for cut in [1, frame.len() / 2, frame.len() - 1] {
        if cut < frame.len() {
            prop_assert!(codec::decode::<T>(&frame[..cut], limit).is_err());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn adverts_round_trip(a in advert()) { round_trips(&a, MAX_ADVERT_BYTES)?; }

    #[test]
    fn task_messages_round_trip(m in task_message()) { round_trips(&m, MAX_FRAME_BYTES)?; }

    #[test]
    fn vote_messages_round_trip(m in vote_message()) { round_trips(&m, MAX_FRAME_BYTES)?; }

    #[test]
    fn request_response_messages_round_trip(g in get_blobs(), r in task_result(), h in hello_response(), b in blobs_response()) {
        round_trips(&HelloRequest, MAX_FRAME_BYTES)?;
        round_trips(&ResultAck, MAX_FRAME_BYTES)?;
        round_trips(&g, MAX_FRAME_BYTES)?;
        round_trips(&r, MAX_FRAME_BYTES)?;
        round_trips(&h, MAX_FRAME_BYTES)?;
        round_trips(&b, MAX_FRAME_BYTES)?;
    }

    #[test]
    fn history_entries_round_trip(r in history_entry()) { round_trips(&r, MAX_FRAME_BYTES)?; }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        // With the right version byte too, so the decoder itself is exercised.
        for frame in [bytes.clone(), [&[codec::CODEC_VERSION][..], &bytes].concat()] {
            let _ = codec::decode::<Advert>(&frame, MAX_ADVERT_BYTES);
            let _ = codec::decode::<TaskMessage>(&frame, MAX_FRAME_BYTES);
            let _ = codec::decode::<VoteMessage>(&frame, MAX_FRAME_BYTES);
            let _ = codec::decode::<GetBlobs>(&frame, MAX_FRAME_BYTES);
            let _ = codec::decode::<TaskResult>(&frame, MAX_FRAME_BYTES);
            let _ = codec::decode::<HelloResponse>(&frame, MAX_FRAME_BYTES);
            let _ = codec::decode::<BlobsResponse>(&frame, MAX_FRAME_BYTES);
            let _ = codec::decode::<Entry>(&frame, MAX_FRAME_BYTES);
        }
    }

    #[test]
    fn mutated_frames_never_panic(m in hello_response(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut frame = codec::encode(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let i = at.index(frame.len());
        frame[i] = byte;
        let _ = codec::decode::<HelloResponse>(&frame, MAX_FRAME_BYTES);
    }
}
