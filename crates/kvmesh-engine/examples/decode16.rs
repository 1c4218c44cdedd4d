use kvmesh_engine::*;
use std::sync::Arc;
use std::time::Instant;
fn main() {
    let path = std::env::var("MODEL").unwrap();
    let batch: usize = std::env::var("BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let file = GgufFile::open(std::path::Path::new(&path)).unwrap();
    let model = Arc::new(LlamaModel::load(&file, 2).unwrap());
    let mut e = Engine::new(
        model,
        EngineConfig {
            num_blocks: 1024,
            enable_prefix_caching: false,
            max_num_batched_tokens: 2048,
            ..EngineConfig::default()
        },
        Vec::new(),
    )
    .unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(steps + 2)
    };
    for _ in 0..batch {
        let p: Vec<u32> = (0..512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 40000) as u32 + 100
            })
            .collect();
        e.add_request(p, params.clone()).unwrap();
    }
    let mut started = std::collections::HashSet::new();
    while started.len() < batch {
        started.extend(
            e.step()
                .unwrap()
                .iter()
                .filter(|o| o.token.is_some())
                .map(|o| o.id),
        );
    }
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..steps {
        n += e
            .step()
            .unwrap()
            .iter()
            .filter(|o| o.token.is_some())
            .count();
    }
    let dt = t.elapsed().as_secs_f64();
    eprintln!(
        "{n} tokens in {dt:.3}s = {:.1} tok/s, {:.1} ms/step",
        n as f64 / dt,
        dt * 1e3 / steps as f64
    );
}
