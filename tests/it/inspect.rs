use crate::common::{fixture, run_in};

fn inspect_json(name: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out =
        run_in(dir.path(), &["inspect", fixture(name).to_str().unwrap(), "--message-format", "json"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()
}

#[test]
fn qwen3_tiny_parameter_count_matches_its_config() {
    // embed 384*64 + 2 layers * (q 64*64 + k,v 2*32*64 + o 64*64 + q/k norm 2*16 + 2 norms*64
    // + gate,up,down 3*128*64) + final norm 64; tied, so no lm_head.
    let expected = 384 * 64 + 2 * (4096 + 2 * 2048 + 4096 + 32 + 128 + 3 * 8192) + 64;
    let v = inspect_json("qwen3-tiny");
    assert_eq!(v["kind"], "model");
    assert_eq!(v["parameters"], expected);
    assert_eq!(v["parameters"], 98_688);
    assert_eq!(v["tensors"], 24);
    assert_eq!(v["bytes"], 98_688 * 4);
    assert_eq!(v["dtypes"], serde_json::json!(["f32"]));
    assert_eq!(v["profile"], "qwen3");
    assert_eq!(v["tie_word_embeddings"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
}

#[test]
fn qwen3_moe_tiny_shows_its_experts_and_counts_every_expert() {
    // embed + lm_head 2*384*64 + 2 layers * (attention as qwen3-tiny 4096+2*2048+4096+32+128
    // + router 8*64 + 8 experts * 3*32*64) + final norm 64.
    let expected = 2 * 384 * 64 + 2 * (4096 + 2 * 2048 + 4096 + 32 + 128 + 8 * 64 + 8 * 3 * 2048) + 64;
    let v = inspect_json("qwen3-moe-tiny");
    assert_eq!((v["parameters"].as_u64(), v["tensors"].as_u64()), (Some(expected), Some(69)));
    assert_eq!(v["profile"], "qwen3_moe");
    assert_eq!(
        v["experts"],
        serde_json::json!({"layers": 2, "experts": 8, "top_k": 2, "width": 32, "norm_topk_prob": true})
    );
    assert_eq!(v["problems"], serde_json::json!([]));
    assert!(inspect_json("qwen3-tiny").get("experts").is_none(), "a dense model has no experts entry");
}

#[test]
fn qwen2_tiny_counts_biases_and_untied_head() {
    // embed + lm_head 2*384*64 + 2 layers * (q 4096+64 + k,v 2*(2048+32) + o 4096 + 2*64
    // + 3*8192) + 64.
    let v = inspect_json("qwen2-tiny");
    assert_eq!(v["parameters"], 123_456);
    assert_eq!(v["tensors"], 2 + 1 + 2 * 12);
    assert_eq!(v["profile"], "qwen2");
    assert_eq!(v["head_dim"], 16);
}

#[test]
fn adapter_shows_rank_alpha_and_targets() {
    let v = inspect_json("qwen2-tiny-adapter");
    assert_eq!(v["kind"], "adapter");
    assert_eq!(v["r"], 4);
    assert_eq!(v["lora_alpha"], 8.0);
    assert_eq!(v["use_rslora"], true);
    assert_eq!(v["target_modules"], "down_proj, q_proj, v_proj");
    // 2 layers: q (4*64 + 64*4), v (4*64 + 32*4), down (4*128 + 64*4).
    assert_eq!(v["parameters"], 2 * (512 + 384 + 768));
    assert_eq!(v["adapted_modules"], 6);
}

#[test]
fn checkpoint_shows_trainer_state() {
    let v = inspect_json("qwen3-tiny-run/checkpoint-4");
    assert_eq!(v["kind"], "adapter");
    assert_eq!(v["r"], 8);
    assert_eq!(v["lora_alpha"], 16.0);
    assert_eq!(v["adapted_modules"], 14);
    assert_eq!(v["trainer_state"]["global_step"], 4);
    assert_eq!(v["trainer_state"]["last_loss"], 5.2904);
}

#[test]
fn training_run_lists_every_checkpoint() {
    let v = inspect_json("qwen3-tiny-run");
    assert_eq!(v["kind"], "training-run");
    let statuses: Vec<(&str, &str)> = v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [("checkpoint-6", "skipped"), ("checkpoint-4", "chosen"), ("checkpoint-2", "older")]
    );
}

#[test]
fn human_output_names_the_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["inspect", fixture("qwen3-tiny").to_str().unwrap()], &[]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("Qwen3ForCausalLM (profile qwen3, model_type qwen3)"), "{}", out.stdout);
    assert!(out.stdout.contains("98,688"));
}
