use kvmesh_engine::*;
use std::path::Path;

fn main() {
    let path = Path::new(&std::env::var("HOME").unwrap())
        .join(".cache/kvmesh/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let t0 = std::time::Instant::now();
    let file = GgufFile::open(&path).unwrap();
    let vocab: Vec<String> = file
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let model = LlamaModel::load(&file, 2).unwrap();
    eprintln!(
        "loaded in {:?}, {} MB weights",
        t0.elapsed(),
        model.weight_bytes() >> 20
    );
    // naive longest-match tokenization of byte-level text
    let enc = |s: &str| -> Vec<u32> {
        let s = s.replace(' ', "Ġ").replace('\n', "Ċ");
        let mut out = vec![];
        let mut i = 0;
        let chars: Vec<char> = s.chars().collect();
        while i < chars.len() {
            let mut best = None;
            for j in (i + 1..=chars.len().min(i + 20)).rev() {
                let sub: String = chars[i..j].iter().collect();
                if let Some(id) = vocab.iter().position(|v| *v == sub) {
                    best = Some((id, j));
                    break;
                }
            }
            let (id, j) = best.unwrap();
            out.push(id as u32);
            i = j;
        }
        out
    };
    let mut prompt = vec![1u32];
    prompt.extend(enc(
        "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face",
    ));
    prompt.push(2);
    prompt.extend(enc("\n"));
    prompt.push(1);
    prompt.extend(enc("user\nWhat is the capital of France?"));
    prompt.push(2);
    prompt.extend(enc("\n"));
    prompt.push(1);
    prompt.extend(enc("assistant\n"));
    eprintln!("prompt {} tokens: {:?}", prompt.len(), prompt);
    let tk = Tokenizer::from_gguf(&file).unwrap();
    let tpl = ChatTemplate::from_gguf(&file).unwrap();
    let text = tpl.render(&[ChatMessage::user("What is the capital of France?")], true);
    eprintln!("template: {:?}", text);
    let p2 = tk.encode(&text, true).unwrap();
    eprintln!("tokenizer {} tokens: {:?}", p2.len(), p2);
    let prompt = if std::env::var("USE_TK").is_ok() {
        p2
    } else {
        prompt
    };
    let mut engine = Engine::new(
        std::sync::Arc::new(model),
        EngineConfig {
            num_blocks: 256,
            ..Default::default()
        },
        vec![2],
    )
    .unwrap();
    let id = engine
        .add_request(
            prompt,
            SamplingParams {
                ignore_eos: std::env::var("IGNORE_EOS").is_ok(),
                ..SamplingParams::greedy(
                    std::env::var("MAXTOK")
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(20),
                )
            },
        )
        .unwrap();
    let t1 = std::time::Instant::now();
    let mut text = String::new();
    while engine.has_unfinished() {
        for o in engine.step().unwrap() {
            if let Some(t) = o.token {
                text.push_str(&vocab[t as usize].replace('Ġ', " ").replace('Ċ', "\n"));
            }
            let _ = (o.id == id, o.finished);
        }
    }
    eprintln!("{:?} in {:?}: {}", engine.stats(), t1.elapsed(), text);
}
#[allow(dead_code)]
fn dbg_tok() {}
