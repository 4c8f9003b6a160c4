//! Ballot signatures: ed25519 over [`Ballot::signed_bytes`], checked against the key
//! inside the voter's PeerId wherever a ballot arrives, whoever relayed it.

use libp2p::PeerId;
use libp2p::identity::Keypair;
use pyagent_protocol::vote::Ballot;

use super::VotesError;

use crate::identity::public_key_of as public_key;

/// Signs `ballot` with this node's key.
pub fn sign(keypair: &Keypair, ballot: &mut Ballot) -> Result<(), VotesError> {
    let bytes = ballot.signed_bytes()?;
    ballot.signature = keypair.sign(&bytes).map_err(|e| VotesError::Sign(e.to_string()))?;
    Ok(())
}

/// Checks a ballot's signature against its voter's key.
pub fn verify(ballot: &Ballot) -> Result<(), VotesError> {
    let peer: PeerId = ballot.voter.parse().map_err(|_| VotesError::Rejected(format!("voter {:?} is not a PeerId", ballot.voter)))?;
    let key = public_key(&peer).ok_or_else(|| VotesError::Rejected("the voter's PeerId does not carry its public key".into()))?;
    let bytes = ballot.signed_bytes()?;
    if key.verify(&bytes, &ballot.signature) {
        Ok(())
    } else {
        Err(VotesError::Rejected(format!("bad signature on the ballot of {}", ballot.voter_key())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyagent_protocol::vote::VoteChoice;

    fn signed(keypair: &Keypair, choice: VoteChoice) -> Ballot {
        let mut b = Ballot {
            proposal: pyagent_protocol::task::TaskId([9; 32]),
            voter: keypair.public().to_peer_id().to_string(),
            agent: None,
            choice,
            cast_unix_ms: 5,
            signature: Vec::new(),
        };
        sign(keypair, &mut b).unwrap();
        b
    }

    #[test]
    fn signatures_are_checked_against_the_voters_peer_id() {
        let keypair = Keypair::generate_ed25519();
        let ballot = signed(&keypair, VoteChoice::Ranking(vec![0, 1]));
        assert!(verify(&ballot).is_ok());
        // Tampered choice.
        let mut tampered = ballot.clone();
        tampered.choice = VoteChoice::Ranking(vec![1, 0]);
        assert!(verify(&tampered).unwrap_err().to_string().contains("bad signature"));
        // Someone else's name on my signature.
        let mut stolen = ballot.clone();
        stolen.voter = Keypair::generate_ed25519().public().to_peer_id().to_string();
        assert!(verify(&stolen).is_err());
        // An agent label cannot be added afterwards.
        let mut relabelled = ballot;
        relabelled.agent = Some("complexity".into());
        assert!(verify(&relabelled).is_err());
    }
}
