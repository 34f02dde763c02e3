//! The hand-written seeds of the `session` target reach the states they were written
//! for, so the fuzzer starts from deep states and the replay checks them.

use std::path::Path;

use chatd_fuzz_checks::session::{Reached, run};

fn seed(name: &str) -> Reached {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus/session")
        .join(name);
    run(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[test]
fn seeds_reach_their_states() {
    let r = seed("slowloris");
    assert_eq!((r.answers, r.ended), (0, Some("header timeout")), "{r:?}");
    let r = seed("get-then-idle");
    assert_eq!(r.answers, 1, "{r:?}");
    assert_eq!(r.ended, Some("close not delivered"), "{r:?}");
    let r = seed("pipelined");
    assert_eq!(r.answers, 9, "{r:?}");
    let r = seed("ws-chat");
    assert!(r.upgraded && r.ws_requests == 1 && r.pings >= 2, "{r:?}");
    assert_eq!(
        r.ended,
        Some("close frame not delivered"),
        "idle timeout: {r:?}"
    );
    let r = seed("ws-flood");
    assert_eq!((r.upgraded, r.ws_requests), (true, 5), "the burst: {r:?}");
    let r = seed("ws-close");
    assert_eq!(
        (r.ws_requests, r.ended),
        (1, Some("close frame not delivered")),
        "{r:?}"
    );
    // A frame trickled a byte every 20 s is never heard: the idle timeout closes first.
    let r = seed("ws-trickle");
    assert_eq!((r.upgraded, r.ws_requests), (true, 0), "{r:?}");
    assert_eq!(r.ended, Some("close frame not delivered"), "{r:?}");
}
