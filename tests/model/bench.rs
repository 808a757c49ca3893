//! Tests of `bench` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::bench::*;

#[test]
fn the_shipped_suite_parses_and_validates() {
    let suite = parse_suite(B0_SUITE).unwrap();
    assert_eq!(suite.len(), 44);
    for l in &suite {
        l.conv_desc(8).validate().unwrap();
    }
    assert!(parse_suite("# nothing\n").is_err());
    assert!(parse_suite("a 1 2 3\n").is_err());
}
