//! Scenario tests of the registry: registration, lifecycle cascades, credentials,
//! KYC inheritance and persistence.
#![expect(clippy::unwrap_used, reason = "tests")]

use proptest::prelude::*;
use serde_json::json;
use tenzro_attest::{ProviderKey, PublicKey};

use crate::*;

const T0: u64 = 1_750_000_000;
const DAY: u64 = 86_400;

fn key(seed: u8) -> PublicKey {
    ProviderKey::from_seed(&[seed; 32]).public_key()
}

fn tier(n: u8) -> KycTier {
    KycTier::new(n).unwrap()
}

fn caps(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_string()).collect()
}

/// A human `h` with agent `a`, `a`'s agent `b`, and `h`'s second agent `c`, all active.
struct Family {
    ids: Identities,
    h: Did,
    a: Did,
    b: Did,
    c: Did,
}

fn family() -> Family {
    let mut ids = Identities::new();
    let h = ids.register_human("Ada", tier(0), key(1), T0).unwrap();
    let a = ids
        .register_agent(Some(&h), caps(&["chat"]), key(2), T0)
        .unwrap();
    let b = ids
        .register_agent(Some(&a), caps(&["chat"]), key(3), T0)
        .unwrap();
    let c = ids
        .register_agent(Some(&h), caps(&["embed"]), key(4), T0)
        .unwrap();
    for did in [&a, &b, &c] {
        ids.activate(did, T0).unwrap();
    }
    Family { ids, h, a, b, c }
}

fn status(ids: &Identities, did: &Did) -> Status {
    ids.resolve(did).unwrap().status().clone()
}

fn cascaded(from: &Did) -> Status {
    Status::Suspended {
        cascaded_from: Some(from.clone()),
        by_admin: false,
    }
}

const OWN: Status = Status::Suspended {
    cascaded_from: None,
    by_admin: false,
};

const BY_ADMIN: Status = Status::Suspended {
    cascaded_from: None,
    by_admin: true,
};

#[test]
fn only_an_admin_lifts_an_admins_suspension() {
    let Family {
        mut ids, h, a, b, ..
    } = family();
    ids.suspend_as(&a, Authority::Admin, T0).unwrap();
    assert_eq!(status(&ids, &a), BY_ADMIN);
    assert_eq!(status(&ids, &b), cascaded(&a));
    assert!(matches!(
        ids.resume(&a, T0 + 1),
        Err(Error::AdminSuspended(d)) if d == a
    ));
    assert_eq!(
        status(&ids, &a),
        BY_ADMIN,
        "the refused resume changed nothing"
    );
    // The owner suspending and resuming itself does not lift it either.
    ids.suspend(&h, T0 + 2).unwrap();
    ids.resume(&h, T0 + 3).unwrap();
    assert_eq!(status(&ids, &a), BY_ADMIN);
    assert_eq!(status(&ids, &b), cascaded(&a));
    assert_eq!(
        ids.resume_as(&a, Authority::Admin, T0 + 4).unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(status(&ids, &b), Status::Active);

    // An admin takes over a controller's own suspension, and then only an admin lifts it.
    ids.suspend(&b, T0 + 5).unwrap();
    assert_eq!(status(&ids, &b), OWN);
    ids.suspend_as(&b, Authority::Admin, T0 + 6).unwrap();
    assert_eq!(status(&ids, &b), BY_ADMIN);
    assert!(matches!(
        ids.resume(&b, T0 + 7),
        Err(Error::AdminSuspended(_))
    ));
    // A controller cannot turn an admin's suspension back into its own.
    assert!(ids.suspend(&b, T0 + 7).is_err());
    assert_eq!(status(&ids, &b), BY_ADMIN);
    // It survives the round trip through storage.
    let text = serde_json::to_string(&ids).unwrap();
    let back: Identities = serde_json::from_str(&text).unwrap();
    assert_eq!(status(&back, &b), BY_ADMIN);
    let row = serde_json::to_value(back.resolve(&b).unwrap()).unwrap();
    assert_eq!(
        row["status"],
        json!({"state": "suspended", "by_admin": true})
    );
}

#[test]
fn live_agents_are_counted_per_owner() {
    let Family {
        mut ids,
        h,
        a,
        b,
        c,
    } = family();
    assert_eq!(ids.live_agents_of(&h), 3);
    assert_eq!(registry::owner_of(&b), &h);
    assert_eq!(registry::owner_of(&h), &h);
    assert_eq!(ids.live_agents_of(&a), 0, "counted at the owner only");
    ids.suspend(&c, T0).unwrap();
    assert_eq!(ids.live_agents_of(&h), 3, "suspended agents count");
    ids.terminate(&a, T0).unwrap();
    assert_eq!(ids.live_agents_of(&h), 1, "a and b are terminated");
    ids.terminate(&a, T0).unwrap_err();
    assert_eq!(ids.live_agents_of(&h), 1);
    let rows: Vec<Identity> = ids.iter().cloned().collect();
    let back = Identities::from_rows(rows, Vec::new()).unwrap();
    assert_eq!(back.live_agents_of(&h), 1, "rebuilt from rows");
    ids.terminate(&h, T0).unwrap();
    assert_eq!(ids.live_agents_of(&h), 0);
}

#[test]
fn the_whole_chain_must_be_active() {
    let Family {
        mut ids, h, a, b, ..
    } = family();
    assert_eq!(ids.inactive_in_chain(&b), None);
    ids.suspend(&b, T0).unwrap();
    assert_eq!(ids.inactive_in_chain(&b), Some((b.clone(), "suspended")));
    ids.resume(&b, T0).unwrap();
    ids.suspend(&h, T0).unwrap();
    assert_eq!(ids.inactive_in_chain(&a).map(|x| x.1), Some("suspended"));
    let stranger =
        Did::controlled(Did::human(did::key_uuid(&key(90))), did::key_uuid(&key(91))).unwrap();
    assert_eq!(
        ids.inactive_in_chain(&stranger).map(|x| x.1),
        Some("unregistered")
    );
}

#[test]
fn rows_read_back_in_any_order() {
    let Family { mut ids, a, c, .. } = family();
    ids.suspend_as(&a, Authority::Admin, T0).unwrap();
    ids.terminate(&c, T0).unwrap();
    let issuer = kyc_issuer();
    ids.trust_issuer(issuer.1.clone(), issuer.0.public_key());
    let mut rows: Vec<String> = ids
        .iter()
        .map(|i| serde_json::to_string(i).unwrap())
        .collect();
    rows.reverse();
    let rows: Vec<Identity> = rows
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    let issuers = ids
        .trusted_issuers()
        .map(|(d, k)| (d.clone(), *k))
        .collect();
    let back = Identities::from_rows(rows.clone(), issuers).unwrap();
    assert_eq!(back, ids);
    // The same checks as the whole registry: a row without its controller fails.
    let orphans: Vec<Identity> = rows.into_iter().filter(|i| i.did().is_machine()).collect();
    assert!(Identities::from_rows(orphans, Vec::new()).is_err());
}

#[test]
fn dids_come_from_keys() {
    let f = family();
    assert_eq!(
        f.h.to_string(),
        format!("did:tenzro:human:{}", did::key_uuid(&key(1)))
    );
    assert_eq!(
        f.a.to_string(),
        format!("did:tenzro:machine:{}:{}", f.h, did::key_uuid(&key(2)))
    );
    assert_eq!(f.b.controller(), Some(&f.a));
    assert_eq!(f.b.depth(), 2);

    // A provider registered as an autonomous agent keeps its attest DID.
    let mut ids = Identities::new();
    let provider = ProviderKey::from_seed(&[9; 32]);
    let did = ids
        .register_agent(None, caps(&["chat.completions"]), provider.public_key(), T0)
        .unwrap();
    assert_eq!(did.to_string(), provider.did());
    assert_eq!(*ids.resolve(&did).unwrap().status(), Status::Created);

    let again = ids.register_agent(None, Vec::new(), provider.public_key(), T0);
    assert!(matches!(again, Err(Error::Exists(_))));
    // The same key may still be a human, and an agent of that human.
    let h = ids
        .register_human("Provider Ops", tier(1), provider.public_key(), T0)
        .unwrap();
    ids.register_agent(Some(&h), Vec::new(), provider.public_key(), T0)
        .unwrap();
    assert_eq!(ids.len(), 3);
}

#[test]
fn registration_is_validated() {
    let mut ids = Identities::new();
    assert!(matches!(
        ids.register_human(" ", tier(0), key(1), T0),
        Err(Error::DisplayName(_))
    ));
    let stranger: Did = Did::human(did::key_uuid(&key(7)));
    let orphan = ids.register_agent(Some(&stranger), Vec::new(), key(2), T0);
    assert!(matches!(orphan, Err(Error::Unknown(_))));
    assert!(
        ids.register_agent(None, caps(&["no spaces"]), key(2), T0)
            .is_err()
    );
    assert!(ids.is_empty());
}

#[test]
fn lifecycle_transitions() {
    let mut ids = Identities::new();
    let agent = ids.register_agent(None, Vec::new(), key(1), T0).unwrap();
    let refused = |r: Result<Vec<Did>, Error>| matches!(r, Err(Error::Transition { .. }));
    assert!(
        refused(ids.suspend(&agent, T0)),
        "created cannot be suspended"
    );
    assert!(refused(ids.resume(&agent, T0)), "created cannot be resumed");
    assert_eq!(
        ids.activate(&agent, T0 + 1).unwrap(),
        std::slice::from_ref(&agent)
    );
    assert!(
        refused(ids.activate(&agent, T0)),
        "active cannot be activated"
    );
    assert!(refused(ids.resume(&agent, T0)), "active cannot be resumed");
    ids.suspend(&agent, T0 + 2).unwrap();
    assert!(
        refused(ids.suspend(&agent, T0)),
        "suspended cannot be suspended again"
    );
    assert!(
        refused(ids.activate(&agent, T0)),
        "suspended cannot be activated"
    );
    ids.resume(&agent, T0 + 3).unwrap();
    assert!(ids.resolve(&agent).unwrap().is_active());
    assert_eq!(ids.resolve(&agent).unwrap().status_changed_at(), T0 + 3);

    let human = ids.register_human("Ada", tier(0), key(2), T0).unwrap();
    assert!(
        ids.resolve(&human).unwrap().is_active(),
        "humans start active"
    );
    assert!(refused(ids.activate(&human, T0)));
    ids.suspend(&human, T0).unwrap();
    ids.resume(&human, T0).unwrap();

    let unknown = Did::machine(did::key_uuid(&key(9)));
    assert!(matches!(ids.suspend(&unknown, T0), Err(Error::Unknown(_))));
}

#[test]
fn terminated_is_final() {
    let mut ids = Identities::new();
    let agent = ids.register_agent(None, Vec::new(), key(1), T0).unwrap();
    ids.terminate(&agent, T0).unwrap();
    let message = format!("identity {agent} is terminated");
    for result in [
        ids.activate(&agent, T0),
        ids.suspend(&agent, T0),
        ids.resume(&agent, T0),
        ids.terminate(&agent, T0),
    ] {
        assert_eq!(result.unwrap_err().to_string(), message);
    }
    let reputation = Reputation::new(0.9).unwrap();
    assert!(matches!(
        ids.set_reputation(&agent, reputation),
        Err(Error::Terminated(_))
    ));
    assert!(matches!(
        ids.register_agent(None, Vec::new(), key(1), T0),
        Err(Error::Exists(_))
    ));
    assert_eq!(*ids.resolve(&agent).unwrap().status(), Status::Terminated);
}

#[test]
fn suspension_cascades_and_resumes_only_what_it_suspended() {
    let Family {
        mut ids,
        h,
        a,
        b,
        c,
    } = family();
    ids.suspend(&c, T0).unwrap();
    let d = ids
        .register_agent(Some(&h), Vec::new(), key(5), T0)
        .unwrap();

    let changed = ids.suspend(&h, T0 + 1).unwrap();
    assert_eq!(changed.first(), Some(&h));
    assert_eq!(changed.len(), 3, "h, a and b: {changed:?}");
    assert_eq!(status(&ids, &h), OWN);
    assert_eq!(status(&ids, &a), cascaded(&h));
    assert_eq!(status(&ids, &b), cascaded(&h), "cascade is transitive");
    assert_eq!(status(&ids, &c), OWN, "c keeps its own suspension");
    assert_eq!(status(&ids, &d), Status::Created);

    // Nothing under a suspended controller can come back on its own.
    assert!(matches!(
        ids.resume(&a, T0),
        Err(Error::ControllerInactive { .. })
    ));
    assert!(matches!(
        ids.activate(&d, T0),
        Err(Error::ControllerInactive { .. })
    ));

    let changed = ids.resume(&h, T0 + 2).unwrap();
    assert_eq!(changed.len(), 3, "h, a and b: {changed:?}");
    assert!(
        [&h, &a, &b]
            .iter()
            .all(|did| ids.resolve(did).unwrap().is_active())
    );
    assert_eq!(
        status(&ids, &c),
        OWN,
        "suspended on its own: stays suspended"
    );
    assert_eq!(status(&ids, &d), Status::Created);
    ids.activate(&d, T0 + 3).unwrap();
}

#[test]
fn own_suspension_of_a_cascaded_agent_survives_the_controllers_resume() {
    let Family {
        mut ids, h, a, b, ..
    } = family();
    ids.suspend(&h, T0).unwrap();
    assert_eq!(ids.suspend(&a, T0).unwrap(), std::slice::from_ref(&a));
    assert_eq!(status(&ids, &a), OWN);
    ids.resume(&h, T0).unwrap();
    assert_eq!(status(&ids, &a), OWN);
    assert_eq!(
        status(&ids, &b),
        cascaded(&h),
        "b's controller a is still suspended"
    );
    ids.resume(&a, T0).unwrap();
    assert!(ids.resolve(&b).unwrap().is_active());
}

#[test]
fn termination_cascades_to_every_agent() {
    let Family {
        mut ids,
        h,
        a,
        b,
        c,
    } = family();
    ids.suspend(&c, T0).unwrap();
    let d = ids
        .register_agent(Some(&h), Vec::new(), key(5), T0)
        .unwrap();
    let mut changed = ids.terminate(&h, T0 + 1).unwrap();
    changed.sort();
    let mut expected = vec![h.clone(), a, b, c, d];
    expected.sort();
    assert_eq!(changed, expected);
    assert!(ids.iter().all(|i| *i.status() == Status::Terminated));
    let late = ids.register_agent(Some(&h), Vec::new(), key(6), T0);
    assert!(matches!(late, Err(Error::Terminated(_))));
}

#[test]
fn controlled_agents_are_listed() {
    let f = family();
    let mut agents: Vec<&Did> = f
        .ids
        .controlled_agents(&f.h)
        .iter()
        .map(|i| i.did())
        .collect();
    agents.sort();
    let mut expected = vec![&f.a, &f.c];
    expected.sort();
    assert_eq!(agents, expected);
    assert_eq!(f.ids.controlled_agents(&f.a).len(), 1);
    assert!(f.ids.controlled_agents(&f.b).is_empty());
}

#[test]
fn reputation() {
    let Family { mut ids, h, a, .. } = family();
    assert_eq!(
        ids.resolve(&a).unwrap().agent().unwrap().reputation(),
        Reputation::NEUTRAL
    );
    ids.set_reputation(&a, Reputation::new(0.75).unwrap())
        .unwrap();
    assert_eq!(
        ids.resolve(&a).unwrap().agent().unwrap().reputation().get(),
        0.75
    );
    assert!(matches!(
        ids.set_reputation(&h, Reputation::NEUTRAL),
        Err(Error::NotAgent(_))
    ));
}

/// A KYC provider outside the registry, trusted by it.
fn kyc_issuer() -> (ProviderKey, Did) {
    let key = ProviderKey::from_seed(&[42; 32]);
    let did = "did:pdis:machine:5f0c1d2e-3b4a-4c5d-8e6f-708192a3b4c5"
        .parse()
        .unwrap();
    (key, did)
}

fn kyc_credential(issuer: &(ProviderKey, Did), subject: &Did, n: u8, until: u64) -> Credential {
    let body = CredentialBody::kyc(issuer.1.clone(), subject.clone(), tier(n), T0, until);
    Credential::issue(body, &issuer.0).unwrap()
}

#[test]
fn kyc_is_inherited_and_expires() {
    let Family {
        mut ids, h, a, b, ..
    } = family();
    let issuer = kyc_issuer();
    ids.trust_issuer(issuer.1.clone(), issuer.0.public_key());
    let expiry = T0 + 30 * DAY;
    ids.add_credential(&h, kyc_credential(&issuer, &h, 2, expiry), T0)
        .unwrap();
    let autonomous = ids.register_agent(None, Vec::new(), key(8), T0).unwrap();
    ids.activate(&autonomous, T0).unwrap();

    let tiers = |ids: &Identities, now| {
        [&h, &a, &b, &autonomous].map(|did| ids.effective_kyc_tier(did, now))
    };
    assert_eq!(tiers(&ids, T0), [2, 2, 2, 0]);
    assert_eq!(tiers(&ids, expiry - 1), [2, 2, 2, 0]);
    assert_eq!(
        tiers(&ids, expiry),
        [0, 0, 0, 0],
        "the controller's credential expired"
    );

    // The registered tier is a floor; credentials can only raise it.
    let h2 = ids.register_human("Bo", tier(1), key(20), T0).unwrap();
    assert_eq!(ids.effective_kyc_tier(&h2, T0), 1);
    ids.add_credential(&h2, kyc_credential(&issuer, &h2, 3, expiry), T0)
        .unwrap();
    assert_eq!(ids.effective_kyc_tier(&h2, T0), 3);
    assert_eq!(ids.effective_kyc_tier(&h2, expiry), 1);

    // Inactive identities have no tier; the tier comes back with them.
    ids.suspend(&h, T0).unwrap();
    assert_eq!(tiers(&ids, T0), [0, 0, 0, 0]);
    ids.resume(&h, T0).unwrap();
    assert_eq!(tiers(&ids, T0), [2, 2, 2, 0]);

    // Distrusting the issuer withdraws what its credentials granted.
    assert!(ids.distrust_issuer(&issuer.1));
    assert_eq!(tiers(&ids, T0), [0, 0, 0, 0]);
    let unknown = Did::human(did::key_uuid(&key(99)));
    assert_eq!(ids.effective_kyc_tier(&unknown, T0), 0);
}

#[test]
fn credentials_are_checked_when_added() {
    let Family { mut ids, h, a, .. } = family();
    let issuer = kyc_issuer();
    let vc = kyc_credential(&issuer, &h, 3, T0 + DAY);

    let untrusted = ids.add_credential(&h, vc.clone(), T0);
    assert!(
        matches!(untrusted, Err(Error::UntrustedIssuer(_))),
        "{untrusted:?}"
    );
    ids.trust_issuer(issuer.1.clone(), issuer.0.public_key());

    let wrong = ids.add_credential(&a, vc.clone(), T0);
    assert!(matches!(wrong, Err(Error::WrongSubject { .. })));
    let expired = ids.add_credential(&h, vc.clone(), T0 + DAY);
    assert!(matches!(expired, Err(Error::Expired { .. })));
    let mut forged = vc.clone();
    forged.subject.claims.insert("kycTier".into(), json!(3));
    forged.expires_at = Some(T0 + 365 * DAY);
    assert!(matches!(
        ids.add_credential(&h, forged, T0),
        Err(Error::BadSignature(_))
    ));
    // A trusted DID with some other key is not the trusted issuer.
    ids.trust_issuer(issuer.1.clone(), key(43));
    assert!(matches!(
        ids.add_credential(&h, vc.clone(), T0),
        Err(Error::BadSignature(_))
    ));
    ids.trust_issuer(issuer.1.clone(), issuer.0.public_key());

    ids.add_credential(&h, vc.clone(), T0).unwrap();
    ids.add_credential(&h, vc, T0).unwrap();
    assert_eq!(
        ids.resolve(&h).unwrap().credentials().len(),
        1,
        "added once"
    );
}

#[test]
fn registered_issuers_sign_but_grant_no_kyc() {
    let Family { mut ids, h, a, .. } = family();
    // The human vouches for its own agent, and tries to raise its own tier.
    let human_key = ProviderKey::from_seed(&[1; 32]);
    let body = CredentialBody {
        credential_type: "DelegationCredential".into(),
        issuer: h.clone(),
        subject: a.clone(),
        claims: [("scope".to_string(), json!(["chat"]))]
            .into_iter()
            .collect(),
        issued_at: T0,
        expires_at: None,
    };
    ids.add_credential(&a, Credential::issue(body, &human_key).unwrap(), T0)
        .unwrap();
    let own = CredentialBody::kyc(h.clone(), h.clone(), tier(3), T0, T0 + DAY);
    ids.add_credential(&h, Credential::issue(own, &human_key).unwrap(), T0)
        .unwrap();
    assert_eq!(
        ids.effective_kyc_tier(&h, T0),
        0,
        "self-issued KYC grants nothing"
    );

    // A suspended identity cannot issue.
    ids.suspend(&h, T0).unwrap();
    let later = CredentialBody::kyc(h.clone(), a.clone(), tier(1), T0, T0 + DAY);
    let refused = ids.add_credential(&a, Credential::issue(later, &human_key).unwrap(), T0);
    assert!(matches!(refused, Err(Error::UntrustedIssuer(_))));
}

#[test]
fn did_documents() {
    let f = family();
    let doc = f.ids.did_document(&f.a).unwrap();
    let a = f.a.to_string();
    let key_id = format!("{a}#key-1");
    assert_eq!(
        doc,
        json!({
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/ed25519-2020/v1"],
            "id": a,
            "controller": f.h.to_string(),
            "verificationMethod": [{
                "id": key_id,
                "type": "Ed25519VerificationKey2020",
                "controller": a,
                "publicKeyMultibase": document::public_key_multibase(&key(2)),
            }],
            "authentication": [key_id],
            "assertionMethod": [key_id],
        })
    );
    let human = f.ids.did_document(&f.h).unwrap();
    assert!(human.get("controller").is_none());
    let unknown = Did::human(did::key_uuid(&key(99)));
    assert!(f.ids.did_document(&unknown).is_none());
}

#[test]
fn state_round_trips_through_json() {
    let Family {
        mut ids,
        h,
        a,
        b,
        c,
    } = family();
    let issuer = kyc_issuer();
    ids.trust_issuer(issuer.1.clone(), issuer.0.public_key());
    ids.add_credential(&h, kyc_credential(&issuer, &h, 2, T0 + DAY), T0)
        .unwrap();
    ids.set_reputation(&b, Reputation::new(0.125).unwrap())
        .unwrap();
    ids.suspend(&c, T0).unwrap();
    ids.suspend(&a, T0).unwrap();
    let text = serde_json::to_string(&ids).unwrap();
    let back: Identities = serde_json::from_str(&text).unwrap();
    assert_eq!(back, ids);
    assert_eq!(back.effective_kyc_tier(&h, T0), 2);
    assert_eq!(
        back.controlled_agents(&h).len(),
        2,
        "the controller index is rebuilt"
    );
    assert_eq!(serde_json::to_string(&back).unwrap(), text);
}

#[test]
fn state_is_checked_when_read() {
    let Family { mut ids, h, a, .. } = family();
    ids.suspend(&a, T0).unwrap();
    let good = serde_json::to_value(&ids).unwrap();
    let check = |edit: &dyn Fn(&mut serde_json::Value), expect: &str| {
        let mut value = good.clone();
        edit(&mut value);
        let err = serde_json::from_value::<Identities>(value)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    };
    let find = |value: &mut serde_json::Value, did: &Did| -> usize {
        let list = value["identities"].as_array().unwrap();
        list.iter()
            .position(|i| i["did"] == did.to_string())
            .unwrap()
    };
    check(&|v| v["version"] = json!(2), "version 2");
    check(&|v| v["extra"] = json!(1), "unknown field");
    check(
        &|v| {
            let i = find(v, &h);
            v["identities"][i]["public_key"] = json!(key(77).to_hex());
        },
        "does not match its key",
    );
    check(
        &|v| {
            let i = find(v, &h);
            v["identities"][i]["role"] =
                json!({"kind": "agent", "capabilities": [], "reputation": 0.5});
        },
        "does not match its kind",
    );
    check(
        &|v| {
            let i = find(v, &h);
            v["identities"].as_array_mut().unwrap().remove(i);
        },
        "controller is not registered",
    );
    check(
        &|v| {
            let i = find(v, &h);
            v["identities"][i]["status"] = json!({"state": "suspended"});
        },
        "is active while its controller is suspended",
    );
    check(
        &|v| {
            let i = find(v, &h);
            v["identities"][i]["role"]["kyc_tier"] = json!(4);
        },
        "KYC tier 4",
    );
    check(
        &|v| {
            let list = v["identities"].as_array_mut().unwrap();
            let copy = list[0].clone();
            list.push(copy);
        },
        "already exists",
    );
}

proptest! {
    /// Whatever happens, an active agent has an active controller, a terminated
    /// controller has only terminated agents, and a cascade suspension never outlives
    /// its controller's.
    #[test]
    fn lifecycle_invariants_hold(ops in prop::collection::vec((0u8..6, 0usize..5), 0..40)) {
        let Family { mut ids, h, a, b, c } = family();
        let d = ids.register_agent(Some(&b), Vec::new(), key(5), T0).unwrap();
        let dids = [h, a, b, c, d];
        for (step, (op, target)) in ops.into_iter().enumerate() {
            let did = &dids[target];
            let now = T0 + step as u64;
            let before = status(&ids, did);
            let _ = match op {
                0 => ids.activate(did, now),
                1 => ids.suspend(did, now),
                2 => ids.resume(did, now),
                3 => ids.terminate(did, now),
                4 => ids.suspend_as(did, Authority::Admin, now),
                _ => ids.resume_as(did, Authority::Admin, now),
            };
            if before.suspended_by_admin() && matches!(op, 1 | 2) {
                prop_assert_eq!(status(&ids, did), before, "a controller lifted an admin's suspension");
            }
            for identity in ids.iter() {
                let Some(controller) = identity.controller() else { continue };
                let controller = ids.resolve(controller).unwrap().status();
                if identity.is_active() {
                    prop_assert_eq!(controller, &Status::Active);
                }
                if *controller == Status::Terminated {
                    prop_assert_eq!(identity.status(), &Status::Terminated);
                }
                if matches!(identity.status(), Status::Suspended { cascaded_from: Some(_), .. }) {
                    prop_assert_ne!(controller, &Status::Active);
                }
            }
        }
    }
}
