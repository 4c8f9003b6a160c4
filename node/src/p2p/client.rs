//! The handle through which the rest of the node talks to the swarm task.

use libp2p::{Multiaddr, PeerId};
use pyagent_protocol::api::{Event, PeerInfo, StatusResult};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Capacity of the command channel.
pub const COMMAND_QUEUE: usize = 256;
/// Capacity of the event broadcast; a slower subscriber skips events (and is told so).
pub const EVENT_QUEUE: usize = 1024;

/// Requests to the swarm task.
#[derive(Debug)]
pub enum Command {
    Status(oneshot::Sender<StatusResult>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Dial a peer found by discovery (no reply: failures are logged).
    Dial { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Close every connection and stop; the reply comes once the swarm is dropped.
    Shutdown(oneshot::Sender<()>),
}

/// The swarm task is gone.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("the node's network task has stopped")]
    Stopped,
}

/// Cloneable handle to the swarm task.
#[derive(Debug, Clone)]
pub struct NodeClient {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
}

impl NodeClient {
    pub(crate) fn new(commands: mpsc::Sender<Command>, events: broadcast::Sender<Event>) -> Self {
        Self { commands, events }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    pub async fn status(&self) -> Result<StatusResult, ClientError> {
        self.ask(Command::Status).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ClientError> {
        self.ask(Command::Peers).await
    }

    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), ClientError> {
        self.commands.send(Command::Dial { peer, addrs }).await.map_err(|_| ClientError::Stopped)
    }

    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.ask(Command::Shutdown).await
    }

    /// A new subscription to membership events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}
