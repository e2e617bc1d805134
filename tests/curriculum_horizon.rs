//! Horizon curriculum: stage boundaries, stickiness, resume, parsing and
//! printing, published settings.

use g2po::curriculum::{BABYAI, Curriculum, CurriculumError, DEEP_SEARCH, PUBLISHED, SCIWORLD, TEXTCRAFT, WEBARENA};

#[test]
fn stepwise_boundaries_and_stickiness() {
    let c = Curriculum::Stepwise { caps: vec![6, 13, 20], stage_len: 100 };
    assert_eq!(c.horizon(1), 6);
    assert_eq!(c.horizon(100), 6, "step S is still stage 0");
    assert_eq!(c.horizon(101), 13, "step S+1 starts stage 1");
    assert_eq!(c.horizon(200), 13);
    assert_eq!(c.horizon(201), 20);
    assert_eq!(c.horizon(300), 20);
    assert_eq!(c.horizon(301), 20, "the last cap sticks");
    assert_eq!(c.horizon(1_000_000), 20);
    assert_eq!(c.horizon(u64::MAX), 20);
    assert_eq!(c.horizon(0), 6, "step 0 is read as step 1");
    // Stage length 1: every step is a stage.
    let c = Curriculum::Stepwise { caps: vec![1, 2, 3], stage_len: 1 };
    assert_eq!((1..=5).map(|s| c.horizon(s)).collect::<Vec<_>>(), vec![1, 2, 3, 3, 3]);
}

#[test]
fn resume_continues_in_stage_g_over_s() {
    let c = Curriculum::Stepwise { caps: vec![8, 12, 15], stage_len: 80 };
    for g in [0u64, 79, 80, 81, 159, 160, 161, 500] {
        let stage = c.resume_stage(g);
        assert_eq!(stage, g / 80, "checkpoint at {g}");
        let expected = [8, 12, 15][(stage as usize).min(2)];
        assert_eq!(c.horizon(g + 1), expected, "first step after checkpoint {g}");
    }
}

#[test]
fn fixed_and_linear() {
    let c = Curriculum::Fixed(20);
    assert!([1, 2, 1000].iter().all(|&s| c.horizon(s) == 20));
    let c = Curriculum::Linear { h0: 6, dh: 2, every: 50, max: None };
    assert_eq!(c.horizon(1), 6);
    assert_eq!(c.horizon(50), 6);
    assert_eq!(c.horizon(51), 8);
    assert_eq!(c.horizon(101), 10);
    assert_eq!(c.horizon(5001), 206);
    let c = Curriculum::Linear { h0: 6, dh: 2, every: 50, max: Some(9) };
    assert_eq!(c.horizon(51), 8);
    assert_eq!(c.horizon(101), 9);
    assert_eq!(c.horizon(u64::MAX), 9, "saturates instead of overflowing");
}

#[test]
fn parse_and_display_round_trip() {
    for (text, value) in [
        ("fixed:20", Curriculum::Fixed(20)),
        ("stepwise:6,13,20@100", Curriculum::Stepwise { caps: vec![6, 13, 20], stage_len: 100 }),
        ("stepwise:7@3", Curriculum::Stepwise { caps: vec![7], stage_len: 3 }),
        ("linear:6+2/50", Curriculum::Linear { h0: 6, dh: 2, every: 50, max: None }),
        ("linear:6+2/50,max=30", Curriculum::Linear { h0: 6, dh: 2, every: 50, max: Some(30) }),
    ] {
        let parsed: Curriculum = text.parse().unwrap();
        assert_eq!(parsed, value);
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.to_string().parse::<Curriculum>().unwrap(), parsed);
    }
    // Whitespace and case are tolerated, output is canonical.
    let c: Curriculum = " Stepwise: 6, 13 ,20 @ 100 ".parse().unwrap();
    assert_eq!(c.to_string(), "stepwise:6,13,20@100");
}

#[test]
fn parse_errors_are_typed() {
    use CurriculumError::*;
    let err = |s: &str| s.parse::<Curriculum>().unwrap_err();
    assert!(matches!(err("20"), Malformed { .. }));
    assert!(matches!(err("exp:3"), UnknownKind(k) if k == "exp"));
    assert!(matches!(err("fixed:abc"), BadNumber { text, .. } if text == "abc"));
    assert!(matches!(err("fixed:-3"), BadNumber { .. }));
    assert!(matches!(err("fixed:0"), Invalid(_)));
    assert!(matches!(err("stepwise:6,13,20"), Malformed { .. }));
    assert!(matches!(err("stepwise:@100"), Malformed { .. }));
    assert!(matches!(err("stepwise:6,,20@100"), BadNumber { .. }));
    assert!(matches!(err("stepwise:6,0@100"), Invalid(_)));
    assert!(matches!(err("stepwise:6,13@0"), Invalid(_)));
    assert!(matches!(err("linear:6+2"), Malformed { .. }));
    assert!(matches!(err("linear:6/50"), Malformed { .. }));
    assert!(matches!(err("linear:6+2/0"), Invalid(_)));
    assert!(matches!(err("linear:6+2/50,cap=30"), Malformed { .. }));
    assert!(matches!(err("linear:6+2/50,max=5"), Invalid(_)));
    assert!(matches!(err("linear:6+x/50"), BadNumber { .. }));
    // Messages name the problem.
    assert!(err("stepwise:6,13,20").to_string().contains("stepwise:CAP"));
}

#[test]
fn invalid_values_do_not_panic() {
    assert_eq!(Curriculum::Stepwise { caps: vec![], stage_len: 10 }.horizon(5), 0);
    assert_eq!(Curriculum::Stepwise { caps: vec![4, 5], stage_len: 0 }.horizon(2), 5);
    assert_eq!(Curriculum::Linear { h0: 1, dh: 1, every: 0, max: None }.horizon(3), 3);
}

#[test]
fn published_settings() {
    let expect = [
        (WEBARENA, "stepwise:8,12,15@80"),
        (DEEP_SEARCH, "stepwise:5,8,10@100"),
        (TEXTCRAFT, "stepwise:10,20,30@100"),
        (BABYAI, "stepwise:6,13,20@100"),
        (SCIWORLD, "stepwise:10,20,30@100"),
    ];
    for (s, text) in expect {
        assert_eq!(s.curriculum().to_string(), text);
        assert!(s.curriculum().validate().is_ok());
    }
    assert_eq!(PUBLISHED.map(|s| s.name), ["webarena", "deepsearch", "textcraft", "babyai", "sciworld"]);
    assert_eq!(WEBARENA.curriculum().horizon(80), 8);
    assert_eq!(WEBARENA.curriculum().horizon(81), 12);
    assert_eq!(WEBARENA.curriculum().horizon(161), 15);
}
