use super::*;

fn env(pairs: &[(&str, &str)]) -> Overrides {
    Overrides::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
}

#[test]
fn defaults_validate() {
    let c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
    let s = c.validate().unwrap();
    assert_eq!(s.p2p_port, 7760);
    assert_eq!(s.api_bind.port(), 7761);
    assert_eq!(s.events_bind.port(), 7762);
    assert_eq!(s.namespace.name(), "default");
    assert!(s.quic && s.mdns && s.swarm_key.is_none());
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    let mut c = Config::from_toml("swarm = \"file\"\n[p2p]\nport = 1000\nquic = false\n").unwrap();
    assert_eq!((c.swarm.as_str(), c.p2p.port, c.p2p.quic), ("file", 1000, false));
    // Untouched by the file: default.
    assert_eq!(c.api.bind.port(), 7761);
    c.apply(env(&[("PYAGENT_P2P_PORT", "2000"), ("PYAGENT_SWARM", "env")]));
    assert_eq!((c.swarm.as_str(), c.p2p.port), ("env", 2000));
    c.apply(Overrides { p2p_port: Some(3000), ..Default::default() });
    assert_eq!((c.swarm.as_str(), c.p2p.port, c.p2p.quic), ("env", 3000, false));
}

#[test]
fn unknown_file_key_is_named() {
    let err = Config::from_toml("[p2p]\nprot = 1\n").unwrap_err();
    assert!(err.contains("prot"), "{err}");
}

#[test]
fn wrong_type_is_named() {
    let err = Config::from_toml("[p2p]\nport = \"many\"\n").unwrap_err();
    assert!(err.contains("port"), "{err}");
    let err = Config::from_toml("[api]\nbind = \"localhost\"\n").unwrap_err();
    assert!(err.contains("bind"), "{err}");
}

#[test]
fn bad_env_value_names_the_variable() {
    let err = Overrides::from_env([("PYAGENT_P2P_PORT".to_string(), "70000".to_string())]).unwrap_err();
    assert!(err.to_string().contains("PYAGENT_P2P_PORT"), "{err}");
    let err = Overrides::from_env([("PYAGENT_MDNS".to_string(), "maybe".to_string())]).unwrap_err();
    assert!(err.to_string().contains("PYAGENT_MDNS"), "{err}");
}

#[test]
fn unknown_env_vars_are_reported() {
    let vars = [("PYAGENT_P2P_PROT", "1"), ("PYAGENT_SWARM", "x"), ("PYAGENT_CONFIG", "f"), ("HOME", "/root")];
    let unknown = unknown_env_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    assert_eq!(unknown, vec!["PYAGENT_P2P_PROT".to_string()]);
}

#[test]
fn env_lists_split_on_commas() {
    let o = env(&[("PYAGENT_MDNS_INTERFACES", "eth0, eth1,"), ("PYAGENT_QUIC", "off")]);
    assert_eq!(o.mdns_interfaces, Some(vec!["eth0".to_string(), "eth1".to_string()]));
    assert_eq!(o.quic, Some(false));
}

fn validate_err(c: &Config) -> String {
    match c.validate() {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn validation_names_the_field() {
    let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
    c.swarm = "bad name".into();
    assert!(validate_err(&c).starts_with("swarm:"));
    let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
    c.bootstrap = vec!["not-an-addr".into()];
    assert!(validate_err(&c).starts_with("bootstrap:"));
    let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
    c.membership.peer_ttl_ms = 100;
    assert!(validate_err(&c).starts_with("membership.peer_ttl_ms:"));
    let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
    c.swarm_key = Some("/nonexistent/swarm.key".into());
    assert!(validate_err(&c).starts_with("swarm_key:"));
    c.swarm_key = Some("/dev/zero".into());
    assert!(validate_err(&c).contains("not a swarm key file"), "a device is read bounded and refused");
}

#[test]
fn agents_default_to_all_builtin_and_can_be_narrowed_or_none() {
    let base = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
    let all: Vec<String> = pyagent_agents::builtin().iter().map(ToString::to_string).collect();
    assert_eq!(base.validate().unwrap().agents, all);
    let none = Config { agents: vec!["none".into()], ..base.clone() };
    assert!(none.validate().unwrap().agents.is_empty());
    let tokens = Config { agents: vec!["tokens".into()], ..base.clone() };
    assert_eq!(tokens.validate().unwrap().agents, vec!["tokens".to_string()]);
    let unknown = Config { agents: vec!["tokens".into(), "astrology".into()], ..base.clone() };
    let err = validate_err(&unknown);
    assert!(err.starts_with("agents:") && err.contains("astrology") && err.contains("tokens"), "{err}");
    let bad = Config { agents: vec!["Not A Name".into()], ..base };
    assert!(validate_err(&bad).starts_with("agents:"));
}

#[test]
fn non_loopback_api_needs_explicit_permission() {
    let mut c = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
    c.api.bind = "0.0.0.0:7761".parse().unwrap();
    assert!(validate_err(&c).starts_with("api.bind:"));
    c.api.allow_non_loopback = true;
    assert!(c.validate().is_ok());
}

#[test]
fn swarm_key_turns_quic_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swarm.key");
    let key = PreSharedKey::new([7; 32]);
    std::fs::write(&path, key.to_string()).unwrap();
    let c = Config { data_dir: Some("/tmp/x".into()), swarm_key: Some(path), ..Default::default() };
    let s = c.validate().unwrap();
    assert!(!s.quic && s.quic_disabled_by_key);
    assert_eq!(s.swarm_key.unwrap().fingerprint().to_string(), key.fingerprint().to_string());
}

#[test]
fn corrupt_swarm_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swarm.key");
    std::fs::write(&path, "/key/swarm/psk/1.0.0/\n/base16/\nnothex").unwrap();
    let c = Config { data_dir: Some("/tmp/x".into()), swarm_key: Some(path), ..Default::default() };
    assert!(validate_err(&c).starts_with("swarm_key:"));
}

#[test]
fn printed_config_parses_back() {
    let c = Config { bootstrap: vec!["/ip4/10.0.0.1/tcp/7760".into()], ..Default::default() };
    let text = c.to_toml();
    let back = Config::from_toml(&text).unwrap();
    assert_eq!(back.bootstrap, c.bootstrap);
    assert_eq!(back.p2p, c.p2p);
}


#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../../scripts/config.example.toml");
    let c = Config::from_toml(text).unwrap();
    assert_eq!(c.data_dir.as_deref(), Some(Path::new("/var/lib/pyagent")));
    let s = c.validate().unwrap();
    assert_eq!((s.p2p_port, s.api_bind.port(), s.events_bind.port()), (7760, 7761, 7762));
}

#[test]
fn the_http_api_leaves_loopback_only_with_the_flag_and_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = Config { data_dir: Some("/tmp/x".into()), ..Default::default() };
    let s = base.validate().unwrap();
    assert_eq!(s.http, Some(HttpSettings { bind: "127.0.0.1:7763".parse().unwrap(), api_key: None }), "on, loopback, no key");

    let mut open = base.clone();
    open.http.bind = "0.0.0.0:7763".parse().unwrap();
    let err = open.validate().unwrap_err().to_string();
    assert!(err.contains("http.bind") && err.contains("--http-allow-non-loopback"), "{err}");
    open.http.allow_non_loopback = true;
    let err = open.validate().unwrap_err().to_string();
    assert!(err.contains("http.api_key_file") && err.contains("--http-api-key"), "the flag alone is not enough: {err}");

    let weak = dir.path().join("weak.key");
    std::fs::write(&weak, "short\n").unwrap();
    open.http.api_key_file = Some(weak);
    let err = open.validate().unwrap_err().to_string();
    assert!(err.contains("at least 16"), "{err}");
    let good = dir.path().join("good.key");
    std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
    open.http.api_key_file = Some(good);
    assert_eq!(open.validate().unwrap().http.unwrap().api_key.as_deref(), Some("0123456789abcdef0123"));
    open.http.api_key_file = Some(dir.path().join("missing.key"));
    assert!(open.validate().unwrap_err().to_string().contains("cannot read"));

    let mut off = base.clone();
    off.apply(env(&[("PYAGENT_HTTP", "false")]));
    assert_eq!(off.validate().unwrap().http, None);
    // Naming an address turns it back on.
    off.apply(Overrides { http_bind: Some("127.0.0.1:9999".parse().unwrap()), ..Default::default() });
    assert_eq!(off.validate().unwrap().http.unwrap().bind.port(), 9999);

    let mut clash = base;
    clash.http.bind = clash.api.bind;
    assert!(clash.validate().unwrap_err().to_string().contains("must differ from api.bind"));
}

#[test]
fn models_are_a_list_from_file_env_and_flags() {
    let mut c = Config::from_toml("[inference]\nmodels = [\"/m/a\", \"/m/b\"]\n").unwrap();
    assert_eq!(c.inference.models.len(), 2);
    c.apply(env(&[("PYAGENT_MODELS", "/m/c, /m/d ,/m/e")]));
    assert_eq!(c.inference.models, vec![PathBuf::from("/m/c"), PathBuf::from("/m/d"), PathBuf::from("/m/e")]);
    c.data_dir = Some("/tmp/x".into());
    assert_eq!(c.validate().unwrap().models.len(), 3);
}

#[test]
fn the_role_comes_from_file_env_and_flags_and_a_wrong_one_is_named() {
    use pyagent_protocol::InferenceRole;
    let mut c = Config::from_toml("[inference]\nrole = \"prefill\"\n").unwrap();
    assert_eq!(c.inference.role, InferenceRole::Prefill);
    c.apply(env(&[("PYAGENT_ROLE", " Decode ")]));
    assert_eq!(c.inference.role, InferenceRole::Decode);
    c.apply(Overrides { role: Some(InferenceRole::Both), ..Default::default() });
    c.data_dir = Some("/tmp/x".into());
    assert_eq!(c.validate().unwrap().role, InferenceRole::Both);
    assert_eq!(Config::default().inference.role, InferenceRole::Both);
    let err = Overrides::from_env([("PYAGENT_ROLE".to_string(), "router".to_string())]).unwrap_err().to_string();
    assert!(err.contains("PYAGENT_ROLE") && err.contains("prefill, decode or both"), "{err}");
    let err = Config::from_toml("[inference]\nrole = \"router\"\n").unwrap_err();
    assert!(err.contains("role") || err.contains("router"), "{err}");
}

#[test]
fn lookahead_comes_from_file_env_and_flags_and_too_many_guesses_are_refused() {
    let mut c = Config::from_toml("[inference]\nlookahead = 0\n").unwrap();
    assert_eq!(c.inference.lookahead, 0);
    c.data_dir = Some("/tmp/x".into());
    assert_eq!(c.validate().unwrap().lookahead, 0);
    c.apply(env(&[("PYAGENT_LOOKAHEAD", "2")]));
    assert_eq!(c.validate().unwrap().lookahead, 2);
    c.apply(Overrides { lookahead: Some(8), ..Default::default() });
    assert_eq!(c.validate().unwrap().lookahead, 8);
    assert_eq!(Config::default().inference.lookahead, pyagent_engine::infer::LOOKAHEAD);
    c.inference.lookahead = 17;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("inference.lookahead") && err.contains("at most 16"), "{err}");
    let err = Overrides::from_env([("PYAGENT_LOOKAHEAD".to_string(), "many".to_string())]).unwrap_err().to_string();
    assert!(err.contains("PYAGENT_LOOKAHEAD"), "{err}");
}
