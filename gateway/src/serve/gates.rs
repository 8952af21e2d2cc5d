//! Which gate a tap may come from: with mutual TLS, a gate speaks only for the gate id
//! its certificate names; with a gate registry, its station and line are the
//! registry's, not whatever the request says.

use std::collections::BTreeMap;
use std::sync::Arc;

use ridegate_core::decision::GateContext;

use super::tls::Peer;
use crate::config::GateEntry;

/// Why a tap's gate was refused; `super::status` maps each to its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum GateRefused {
    /// Mutual TLS is on and the connection has no client certificate.
    #[error("gate calls need the gate's client certificate")]
    NoCertificate,
    /// The client certificate names no gate.
    #[error("the client certificate names no gate (SAN URI spiffe://<trust domain>/gate/<gate_id>)")]
    NotAGate,
    /// The client certificate names another gate.
    #[error("the client certificate is for gate {certified}; it cannot speak for gate.gate_id {claimed}")]
    OtherGate {
        /// The gate the certificate names.
        certified: Arc<str>,
        /// The gate the request names.
        claimed: String,
    },
    /// A registry is configured and the gate is not in it.
    #[error("gate.gate_id {0} is not in ridegate's gate registry")]
    Unregistered(String),
    /// The request names another station or line than the registry has for the gate.
    #[error("{field} differs from the registry's for gate {gate}")]
    OtherPlace {
        /// `gate.station_id` or `gate.line_id`.
        field: &'static str,
        /// The gate.
        gate: String,
    },
}

/// Admits taps by their gate.
#[derive(Debug, Clone)]
pub(super) struct GateAdmission {
    /// Mutual TLS is on: a tap's gate must be the one its connection's certificate names.
    bound: bool,
    /// The gate registry (empty: none).
    registry: Arc<BTreeMap<String, GateEntry>>,
}

impl GateAdmission {
    /// Admission with certificates bound to gates when `bound`, and `registry`.
    pub(super) fn new(bound: bool, registry: BTreeMap<String, GateEntry>) -> Self {
        Self {
            bound,
            registry: Arc::new(registry),
        }
    }

    /// Checks a follower of the gate state feed: with mutual TLS, a gate certificate
    /// (and, with a registry, a registered gate).
    pub(super) fn admit_follower(&self, peer: Option<&Peer>) -> Result<(), GateRefused> {
        if !self.bound {
            return Ok(());
        }
        let peer = peer.filter(|p| p.certified).ok_or(GateRefused::NoCertificate)?;
        let certified = peer.gate.as_ref().ok_or(GateRefused::NotAGate)?;
        if !self.registry.is_empty() && !self.registry.contains_key(&**certified) {
            return Err(GateRefused::Unregistered(certified.to_string()));
        }
        Ok(())
    }

    /// Checks `gate` against the connection's `peer` and the registry, filling in the
    /// station and line the registry has for it.
    pub(super) fn admit(&self, peer: Option<&Peer>, gate: &mut GateContext) -> Result<(), GateRefused> {
        if self.bound {
            let peer = peer.filter(|p| p.certified).ok_or(GateRefused::NoCertificate)?;
            let certified = peer.gate.as_ref().ok_or(GateRefused::NotAGate)?;
            if **certified != *gate.gate_id {
                return Err(GateRefused::OtherGate {
                    certified: certified.clone(),
                    claimed: gate.gate_id.clone(),
                });
            }
        }
        if self.registry.is_empty() {
            return Ok(());
        }
        let entry = self
            .registry
            .get(&gate.gate_id)
            .ok_or_else(|| GateRefused::Unregistered(gate.gate_id.clone()))?;
        for (field, claimed, registered) in [
            ("gate.station_id", &mut gate.station_id, &entry.station),
            ("gate.line_id", &mut gate.line_id, &entry.line),
        ] {
            if claimed.is_empty() {
                claimed.clone_from(registered);
            } else if claimed != registered {
                return Err(GateRefused::OtherPlace {
                    field,
                    gate: gate.gate_id.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ridegate_core::model::{Direction, UnixMillis};

    use super::*;

    fn gate(id: &str, station: &str, line: &str) -> GateContext {
        GateContext {
            gate_id: id.into(),
            station_id: station.into(),
            line_id: line.into(),
            direction: Direction::Entry,
            tapped_at: UnixMillis(0),
            budget: None,
        }
    }

    fn peer(gate: Option<&str>) -> Peer {
        Peer {
            certified: true,
            gate: gate.map(Arc::from),
        }
    }

    #[test]
    fn with_mutual_tls_a_gate_speaks_only_for_itself() {
        let admission = GateAdmission::new(true, BTreeMap::new());
        let mut tap = gate("G1", "S1", "L1");
        assert_eq!(admission.admit(Some(&peer(Some("G1"))), &mut tap), Ok(()));
        assert_eq!(
            admission.admit(Some(&peer(Some("G2"))), &mut tap),
            Err(GateRefused::OtherGate {
                certified: "G2".into(),
                claimed: "G1".into()
            })
        );
        assert_eq!(admission.admit(Some(&peer(None)), &mut tap), Err(GateRefused::NotAGate));
        assert_eq!(
            admission.admit(Some(&Peer::default()), &mut tap),
            Err(GateRefused::NoCertificate)
        );
        assert_eq!(admission.admit(None, &mut tap), Err(GateRefused::NoCertificate));
        // Without mutual TLS, the gate id is taken as said.
        let open = GateAdmission::new(false, BTreeMap::new());
        assert_eq!(open.admit(None, &mut tap), Ok(()));
    }

    #[test]
    fn the_registry_supplies_station_and_line_and_refuses_others() {
        let registry = BTreeMap::from([(
            "G1".to_owned(),
            GateEntry {
                station: "S07".into(),
                line: "L10".into(),
            },
        )]);
        let admission = GateAdmission::new(false, registry);
        let mut tap = gate("G1", "", "");
        admission.admit(None, &mut tap).unwrap();
        assert_eq!((tap.station_id.as_str(), tap.line_id.as_str()), ("S07", "L10"));
        let mut same = gate("G1", "S07", "L10");
        assert_eq!(admission.admit(None, &mut same), Ok(()));
        let mut elsewhere = gate("G1", "S99", "");
        assert_eq!(
            admission.admit(None, &mut elsewhere),
            Err(GateRefused::OtherPlace {
                field: "gate.station_id",
                gate: "G1".into()
            })
        );
        let mut unknown = gate("G9", "S07", "");
        assert_eq!(
            admission.admit(None, &mut unknown),
            Err(GateRefused::Unregistered("G9".into()))
        );
    }
}
