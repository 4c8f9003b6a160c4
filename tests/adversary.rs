//! A hostile peer, built from the node's own transport and behaviour, joins a node and
//! sends it malformed and forged task messages and a forged blob. The node rejects each
//! with a reason (the forged blob fails the task, and the requester is told why), executes
//! nothing it should not, and keeps serving.


use crate::support;

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Swarm, gossipsub, identity::Keypair, request_response};
use pyagent_node::p2p::behaviour::{Behaviour, BehaviourEvent};
use pyagent_node::p2p::transport;
use pyagent_protocol::rpc::{BlobData, BlobsResponse, HelloResponse, ResultAck};
use pyagent_protocol::task::{BlobId, FileRef, TaskMessage, TaskOutcome, TaskSpec};
use pyagent_protocol::{Advert, SwarmNamespace, VersionRange};
use serde_json::json;
use support::{Opts, start_in, view, wait_until};

fn advert(keypair: &Keypair, seq: u64) -> Advert {
    Advert {
        protocol_versions: VersionRange::SUPPORTED,
        peer_id: keypair.public().to_peer_id().to_string(),
        node_version: "adversary/0".into(),
        listen_addrs: vec![],
        agents: vec![],
        capabilities: vec![],
        capacity: Default::default(),
        uptime_secs: 0,
        boot_id: 1,
        seq,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_forged_task_traffic_is_rejected_and_the_node_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_in(dir.path(), &Opts::default()).await;

    let keypair = Keypair::generate_ed25519();
    let me = keypair.public().to_peer_id();
    let namespace = SwarmNamespace::default();
    let mut swarm = Swarm::new(
        transport::build(&keypair, None, false).unwrap(),
        Behaviour::new(&keypair, &namespace, VersionRange::SUPPORTED, 64).unwrap(),
        me,
        libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(Duration::from_secs(60)),
    );
    let tasks = gossipsub::IdentTopic::new(namespace.task_topic());
    swarm.behaviour_mut().gossipsub.subscribe(&tasks).unwrap();
    let adverts = gossipsub::IdentTopic::new(namespace.advert_topic());
    swarm.behaviour_mut().gossipsub.subscribe(&adverts).unwrap();
    swarm.dial(node.p2p_addrs()[0].clone()).unwrap();

    // Drive the hostile peer: answer Hello (so the node counts it as a member), serve a
    // forged blob, and collect the task results the node sends back.
    let real = b"def f(x):\n    return x\n".to_vec();
    let blob = BlobId::of(&real);
    let (results_tx, mut results) = tokio::sync::mpsc::channel::<TaskOutcome>(8);
    let (publish_tx, mut publish) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::channel::<()>(1);
    let keypair2 = keypair.clone();
    let driver = tokio::spawn(async move {
        // Adverts keep the hostile peer in the node's view (its TTL is 2 s in tests).
        let mut advert_tick = tokio::time::interval(Duration::from_millis(500));
        let mut seq = 1;
        loop {
            tokio::select! {
                _ = advert_tick.tick() => {
                    seq += 1;
                    let bytes = pyagent_protocol::encode(&advert(&keypair2, seq)).unwrap();
                    let _ = swarm.behaviour_mut().gossipsub.publish(adverts.clone(), bytes);
                }
                Some(bytes) = publish.recv() => {
                    swarm.behaviour_mut().gossipsub.publish(tasks.clone(), bytes).unwrap();
                }
                event = swarm.select_next_some() => match event {
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. })) if topic == tasks.hash() => {
                        let _ = subscribed_tx.try_send(());
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Hello(request_response::Event::Message { message: request_response::Message::Request { channel, .. }, .. })) => {
                        let response = HelloResponse { advert: Box::new(advert(&keypair2, seq)), members: vec![] };
                        let _ = swarm.behaviour_mut().hello.send_response(channel, response);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Blobs(request_response::Event::Message { message: request_response::Message::Request { request, channel, .. }, .. })) => {
                        // The bytes do not match the id asked for.
                        let forged = request.ids.into_iter().map(|id| BlobData { id, bytes: b"forged".to_vec() }).collect();
                        let _ = swarm.behaviour_mut().blobs.send_response(channel, BlobsResponse::Blobs(forged));
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Results(request_response::Event::Message { message: request_response::Message::Request { request, channel, .. }, .. })) => {
                        let _ = results_tx.send(request.outcome).await;
                        let _ = swarm.behaviour_mut().results.send_response(channel, ResultAck);
                    }
                    _ => {}
                },
            }
        }
    });
    wait_until("the node counts the hostile peer as a member", Duration::from_secs(15), || async { view(&node).await.len() == 1 }).await;
    tokio::time::timeout(Duration::from_secs(15), subscribed.recv()).await.expect("the node subscribes to the task topic");
    tokio::time::sleep(Duration::from_millis(1200)).await; // a gossip heartbeat

    let spec = |requester: String| TaskSpec {
        capability: "python.complexity".into(),
        files: vec![FileRef { path: "f.py".into(), blob, size: real.len() as u64 }],
        requester,
        created_unix_ms: 1,
        nonce: 2,
        lease_ms: 2000,
    };
    // 1. Garbage, and a task that claims another requester than its signer.
    publish_tx.send(vec![1, 2, 3, 4, 5]).await.unwrap();
    let forged = TaskMessage::Submit(spec(node.peer_id().to_string()));
    publish_tx.send(pyagent_protocol::encode(&forged).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = node.client().status().await.unwrap();
    assert_eq!((status.tasks.running, status.tasks.executed), (0, 0), "a forged task was run");

    // 2. A task of our own whose blob we then forge: the node verifies it and fails the
    //    task, telling us why.
    publish_tx.send(pyagent_protocol::encode(&TaskMessage::Submit(spec(me.to_string()))).unwrap()).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(15), results.recv()).await.expect("a result comes back").unwrap();
    match outcome {
        TaskOutcome::Failed { reason } => assert!(reason.contains("did not provide blob"), "{reason}"),
        other => panic!("a forged blob was accepted: {other:?}"),
    }

    // 3. The node keeps serving: a real task completes.
    let request = json!({ "id": 1, "method": "task.submit", "params": { "capability": "python.tokens", "files": [{ "path": "a.py", "text": "hello world" }] } });
    let reply = pyagent_node::api::client::call_raw(node.api_endpoint(), request.to_string().into_bytes(), Duration::from_secs(5)).await.unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    let task = reply["result"]["task_id"].as_str().unwrap().to_owned();
    let request = json!({ "id": 2, "method": "task.wait", "params": { "task_ids": [task], "timeout_ms": 10000 } });
    let reply = pyagent_node::api::client::call_raw(node.api_endpoint(), request.to_string().into_bytes(), Duration::from_secs(15)).await.unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["result"]["tasks"][0]["state"], "completed", "{reply}");
    driver.abort();
    node.shutdown().await;
}
