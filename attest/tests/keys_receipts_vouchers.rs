//! Keys on disk, receipts and vouchers: round trips and tamper refusal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tenzro_attest::{Error, ProviderKey, PublicKey, Receipt, ReceiptBody, Signature, VoucherBody};

fn body() -> ReceiptBody {
    ReceiptBody {
        model: "qwen2.5-0.5b-instruct".to_string(),
        weight_sha256: tenzro_attest::sha256(b"weights"),
        request_sha256: tenzro_attest::sha256(b"request"),
        response_sha256: tenzro_attest::sha256(b"response"),
        prompt_tokens: 12,
        completion_tokens: 34,
        issued_at: 1_780_000_000,
    }
}

#[test]
fn key_file_is_created_private_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/provider.key");
    let a = ProviderKey::load_or_create(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let b = ProviderKey::load_or_create(&path).unwrap();
    assert_eq!(a.public_key(), b.public_key());
    assert_eq!(a.did(), b.did());
    let debug = format!("{a:?}");
    let secret = std::fs::read_to_string(&path).unwrap();
    assert!(!debug.contains(secret.trim()), "Debug leaks the secret");
    assert!(debug.contains(&a.public_key_hex()));
}

#[cfg(unix)]
#[test]
fn readable_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider.key");
    ProviderKey::load_or_create(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        ProviderKey::load_or_create(&path),
        Err(Error::KeyFile { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "not hex\n").unwrap();
    assert!(matches!(
        ProviderKey::load_or_create(&path),
        Err(Error::KeyFile { .. })
    ));
}

#[test]
fn did_is_deterministic_uuid_v8() {
    let key = ProviderKey::from_seed(&[1u8; 32]);
    let did = key.did();
    let uuid = did.strip_prefix("did:tenzro:machine:").unwrap();
    let parsed = uuid::Uuid::parse_str(uuid).unwrap();
    assert_eq!(parsed.get_version_num(), 8);
    assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
    let digest = tenzro_attest::sha256(&key.public_key().to_bytes());
    assert_eq!(parsed.as_bytes()[..6], digest[..6]);
    assert_eq!(ProviderKey::from_seed(&[1u8; 32]).did(), did);
    assert_ne!(ProviderKey::from_seed(&[2u8; 32]).did(), did);
}

#[test]
fn public_key_and_signature_parse_from_hex() {
    let key = ProviderKey::from_seed(&[3u8; 32]);
    let pk = PublicKey::from_hex(&format!("0x{}\n", key.public_key_hex())).unwrap();
    assert_eq!(pk, key.public_key());
    assert!(PublicKey::from_hex("abcd").is_err());
    assert!(PublicKey::from_hex(&"zz".repeat(32)).is_err());
    let sig = key.sign(b"m");
    assert_eq!(Signature::from_hex(&sig.to_hex()).unwrap(), sig);
    assert!(pk.verify(b"m", &sig));
    assert!(!pk.verify(b"n", &sig));
}

#[test]
fn receipt_round_trips_and_verifies() {
    let key = ProviderKey::from_seed(&[4u8; 32]);
    let receipt = body().sign(&key);
    let json = serde_json::to_string(&receipt).unwrap();
    let back: Receipt = serde_json::from_str(&json).unwrap();
    assert_eq!(back, receipt);
    back.verify(None).unwrap();
    back.verify(Some(&key.public_key())).unwrap();
    assert_eq!(back.body(), body());
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["provider_key"], key.public_key_hex());
    assert_eq!(
        value["weight_sha256"],
        hex::encode(tenzro_attest::sha256(b"weights"))
    );
}

#[test]
fn tampered_receipts_are_refused() {
    let key = ProviderKey::from_seed(&[5u8; 32]);
    let receipt = body().sign(&key);
    let other = ProviderKey::from_seed(&[6u8; 32]);
    assert!(matches!(
        receipt.verify(Some(&other.public_key())),
        Err(Error::WrongKey { .. })
    ));
    type Tamper = Box<dyn Fn(&mut Receipt)>;
    let tampers: Vec<Tamper> = vec![
        Box::new(|r| r.model.push('x')),
        Box::new(|r| r.weight_sha256[0] ^= 1),
        Box::new(|r| r.request_sha256[31] ^= 1),
        Box::new(|r| r.response_sha256[7] ^= 1),
        Box::new(|r| r.prompt_tokens += 1),
        Box::new(|r| r.completion_tokens -= 1),
        Box::new(|r| r.issued_at += 1),
        Box::new(move |r| r.provider_key = other.public_key()),
    ];
    for (i, t) in tampers.iter().enumerate() {
        let mut r = receipt.clone();
        t(&mut r);
        assert!(
            matches!(r.verify(None), Err(Error::BadSignature { .. })),
            "tamper {i} accepted"
        );
    }
    // Every byte of the signature.
    for at in 0..64 {
        let mut bytes = receipt.signature.to_bytes();
        bytes[at] ^= 0x10;
        let mut r = receipt.clone();
        r.signature = Signature::from_bytes(&bytes);
        assert!(r.verify(None).is_err(), "signature flip at {at} accepted");
    }
    let json = serde_json::to_string(&receipt)
        .unwrap()
        .replace("\"model\"", "\"extra\":1,\"model\"");
    assert!(serde_json::from_str::<Receipt>(&json).is_err());
}

#[test]
fn vouchers_sign_countersign_and_verify() {
    let payer = ProviderKey::from_seed(&[7u8; 32]);
    let provider = ProviderKey::from_seed(&[8u8; 32]);
    let body = VoucherBody {
        channel_id: "ch-1".to_string(),
        nonce: 3,
        cumulative_spent: u128::MAX - 5,
        asset: "USDC".to_string(),
    };
    let mut v = body.clone().sign(&payer);
    v.verify_payer(Some(&payer.public_key())).unwrap();
    assert!(matches!(v.verify(None, None), Err(Error::NotCountersigned)));
    v.countersign(&provider).unwrap();
    v.verify(Some(&payer.public_key()), Some(&provider.public_key()))
        .unwrap();
    let json = serde_json::to_string(&v).unwrap();
    assert!(json.contains(&format!("\"cumulative_spent\":\"{}\"", u128::MAX - 5)));
    let back: tenzro_attest::Voucher = serde_json::from_str(&json).unwrap();
    assert_eq!(back, v);
    back.verify(None, None).unwrap();
    assert!(matches!(
        v.verify(Some(&provider.public_key()), None),
        Err(Error::WrongKey { .. })
    ));

    let mut t = v.clone();
    t.cumulative_spent -= 1;
    assert!(t.verify_payer(None).is_err());
    let mut t = v.clone();
    t.channel_id = "ch-2".into();
    assert!(t.verify(None, None).is_err());
    let mut t = v.clone();
    t.provider_key = Some(payer.public_key());
    assert!(matches!(
        t.verify(None, None),
        Err(Error::BadSignature { .. })
    ));
    assert!(
        serde_json::from_str::<tenzro_attest::Voucher>(
            &json.replace("\"cumulative_spent\":\"", "\"cumulative_spent\":\"-")
        )
        .is_err()
    );

    let next = VoucherBody {
        nonce: 4,
        cumulative_spent: u128::MAX,
        ..body.clone()
    }
    .sign(&payer);
    next.check_successor(&v).unwrap();
    assert!(v.check_successor(&next).is_err());
    let cheaper = VoucherBody {
        nonce: 5,
        cumulative_spent: 1,
        ..body
    }
    .sign(&payer);
    assert!(cheaper.check_successor(&v).is_err());
}
