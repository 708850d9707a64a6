//! Property tests for the report-data binding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use tenzro_attest::binding::{REPORT_DATA_DOMAIN, check_binding, gpu_nonce, report_data};
use tenzro_attest::{Error, ProviderKey};

fn key(seed: u8) -> tenzro_attest::PublicKey {
    ProviderKey::from_seed(&[seed; 32]).public_key()
}

proptest! {
    #[test]
    fn order_and_duplicates_do_not_matter(digests in prop::collection::vec(any::<[u8; 32]>(), 0..6), nonce in prop::collection::vec(any::<u8>(), 0..64), seed in any::<u8>()) {
        let pk = key(seed);
        let a = report_data(REPORT_DATA_DOMAIN, &pk, &digests, &nonce);
        let mut shuffled = digests.clone();
        shuffled.reverse();
        shuffled.extend(digests.iter().take(2).copied());
        prop_assert_eq!(a, report_data(REPORT_DATA_DOMAIN, &pk, &shuffled, &nonce));
        prop_assert!(check_binding(&a, REPORT_DATA_DOMAIN, &pk, &shuffled, &nonce).is_ok());
    }

    #[test]
    fn any_change_breaks_the_binding(digests in prop::collection::vec(any::<[u8; 32]>(), 1..5), nonce in prop::collection::vec(any::<u8>(), 1..64), bit in 0usize..256, seed in 0u8..200) {
        let pk = key(seed);
        let a = report_data(REPORT_DATA_DOMAIN, &pk, &digests, &nonce);
        let mut wrong = digests.clone();
        wrong[0][bit / 8] ^= 1 << (bit % 8);
        prop_assert!(matches!(check_binding(&a, REPORT_DATA_DOMAIN, &pk, &wrong, &nonce), Err(Error::BindingMismatch)));
        let mut other_nonce = nonce.clone();
        other_nonce[0] ^= 1;
        prop_assert!(check_binding(&a, REPORT_DATA_DOMAIN, &pk, &digests, &other_nonce).is_err());
        prop_assert!(check_binding(&a, REPORT_DATA_DOMAIN, &key(seed + 1), &digests, &nonce).is_err());
        prop_assert!(check_binding(&a, b"other/domain", &pk, &digests, &nonce).is_err());
        prop_assert!(check_binding(&a, REPORT_DATA_DOMAIN, &pk, &digests[1..], &nonce).is_err());
        prop_assert!(check_binding(&a[..32], REPORT_DATA_DOMAIN, &pk, &digests, &nonce).is_err());
        prop_assert_eq!(&gpu_nonce(&a)[..], &a[..32]);
    }
}

#[test]
fn length_prefixes_separate_fields() {
    let pk = key(1);
    // Moving a byte from the nonce into the domain tag must change the result.
    let a = report_data(b"ab", &pk, &[], b"c");
    let b = report_data(b"a", &pk, &[], b"bc");
    assert_ne!(a, b);
}
