use super::*;

fn parse(argv: &[&str]) -> Args {
    Args::parse(argv.iter().map(|a| a.to_string())).unwrap()
}

#[test]
fn flags_take_the_next_word_or_stand_alone_for_true() {
    let args = parse(&["--conns", "10", "--skip-idle", "--impl", "yawc-tuned"]);
    assert_eq!(args.num("conns", NO_ENV, 0u64).unwrap(), 10);
    assert!(args.flag("skip-idle", NO_ENV));
    assert!(!args.flag("skip-echo", NO_ENV));
    assert_eq!(args.get("impl", NO_ENV).as_deref(), Some("yawc-tuned"));
    assert_eq!(args.num("secs", NO_ENV, 7u64).unwrap(), 7, "the default");
    assert!(Args::parse(["stray".to_string()].into_iter()).is_err());
}

#[test]
fn an_environment_variable_is_the_fallback_unless_there_is_none() {
    // A name no other test or tool sets.
    let env = "ROOMCAST_BENCH_ARGS_TEST_SECS";
    std::env::set_var(env, "42");
    let args = parse(&[]);
    assert_eq!(args.num("secs", env, 1u64).unwrap(), 42);
    assert_eq!(args.num("secs", NO_ENV, 1u64).unwrap(), 1);
    assert_eq!(parse(&["--secs", "3"]).num("secs", env, 1u64).unwrap(), 3);
    std::env::remove_var(env);
}

#[test]
fn a_bad_number_names_the_flag_and_its_variable_if_any() {
    let args = parse(&["--secs", "ten"]);
    let with_env = args.num::<u64>("secs", "BENCH_SECS", 1).unwrap_err();
    assert_eq!(
        with_env.to_string(),
        "--secs (BENCH_SECS): not a number: \"ten\""
    );
    let alone = args.num::<u64>("secs", NO_ENV, 1).unwrap_err();
    assert_eq!(alone.to_string(), "--secs: not a number: \"ten\"");
}
