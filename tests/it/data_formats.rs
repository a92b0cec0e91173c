//! The dataset loader against SmolLM2-135M-Instruct's real tokenizer and chat template (both from
//! the GGUF's metadata, `io::model_cache::default_model_path()`; the file is cached locally, so
//! nothing here skips): every format, the loss mask of a two-turn dialogue decoded back to text,
//! `train_on_prompt`, truncation, bad rows with their lines in JSONL and JSON-array files, and the
//! batching invariants over the loaded examples.

use std::path::{Path, PathBuf};

use wgtune::data::batch::{collate, epoch_batches};
use wgtune::data::dataset::{
    DataError, DataFormat, Dataset, DatasetOptions, load_dataset, split_eval,
};
use wgtune::data::template::{ChatTemplate, Message};
use wgtune::data::tokenizer::Tokenizer;
use wgtune::eval::Example;
use wgtune::io::gguf::GgufFile;
use wgtune::io::model_cache::default_model_path;
use wgtune::model::IGNORE_INDEX;

/// SmolLM2's tokenizer and its own chat template with the tokenizer's bos/eos filled in (what
/// `Pretrained::load` builds, without the weights).
struct Smol {
    tok: Tokenizer,
    template: ChatTemplate,
    dir: tempfile::TempDir,
}

impl Smol {
    fn new() -> Self {
        let file = GgufFile::open(default_model_path().unwrap()).unwrap();
        let tok = Tokenizer::from_gguf_file(&file).unwrap();
        let source = file.chat_template().unwrap().unwrap();
        let template = ChatTemplate::new(source)
            .unwrap()
            .with_special_tokens(tok.bos_token(), tok.eos_token());
        Self {
            tok,
            template,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    fn load(&self, path: &Path, opts: &DatasetOptions) -> Result<Dataset, DataError> {
        load_dataset(path, Some(&self.tok), &self.template, opts)
    }

    fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| u32::try_from(i).unwrap()).collect();
        self.tok.decode(&ids, false).unwrap()
    }

    /// The text of each run of consecutive unmasked labels.
    fn trained_runs(&self, ex: &Example) -> Vec<String> {
        let mut runs: Vec<Vec<i64>> = Vec::new();
        let mut prev_on = false;
        for &y in &ex.labels {
            let on = y != IGNORE_INDEX;
            match (on, prev_on) {
                (true, false) => runs.push(vec![y]),
                (true, true) => runs.last_mut().unwrap().push(y),
                _ => {}
            }
            prev_on = on;
        }
        runs.iter().map(|r| self.decode(r)).collect()
    }
}

fn opts() -> DatasetOptions {
    DatasetOptions {
        format: None,
        max_len: 512,
        train_on_prompt: false,
        skip_bad_rows: false,
    }
}

fn skipping() -> DatasetOptions {
    DatasetOptions {
        skip_bad_rows: true,
        ..opts()
    }
}

const IM_START: i64 = 1;
const IM_END: i64 = 2;

/// `(line, reason)` of a row error.
fn row_error(result: Result<Dataset, DataError>, file: &Path) -> (usize, String) {
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&file.display().to_string()), "{msg}");
    match err {
        DataError::Row { line, reason, .. } => (line, reason),
        other => panic!("not a row error: {other}"),
    }
}

const SHAREGPT_2_TURNS: &str = r#"{"conversations": [{"from": "system", "value": "You answer in one sentence."}, {"from": "human", "value": "What is the capital of France?"}, {"from": "gpt", "value": "Paris is the capital of France."}, {"from": "human", "value": "And of Italy?"}, {"from": "gpt", "value": "Rome is the capital of Italy."}]}"#;

/// The two answers of a ShareGPT dialogue, each with its `<|im_end|>`, are exactly the tokens
/// with labels; no user or system text is trained on. The ids are the template's rendering
/// encoded without added special tokens: SmolLM2's template writes no bos and the GGUF tokenizer
/// adds none, so the sequence starts with `<|im_start|>` (id 1, which this GGUF also names bos).
#[test]
fn sharegpt_two_turns_trains_exactly_the_answers() {
    let s = Smol::new();
    let path = s.write("chat.jsonl", SHAREGPT_2_TURNS);
    let ds = s.load(&path, &opts()).unwrap();
    assert_eq!(ds.format, DataFormat::ShareGpt);
    assert!(ds.bad_rows.is_empty());
    let ex = &ds.examples[0];

    let messages = [
        Message::new("system", "You answer in one sentence."),
        Message::new("user", "What is the capital of France?"),
        Message::new("assistant", "Paris is the capital of France."),
        Message::new("user", "And of Italy?"),
        Message::new("assistant", "Rome is the capital of Italy."),
    ];
    let text = s.template.render(&messages, false).unwrap();
    let ids: Vec<i64> = s
        .tok
        .encode(&text, false)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    assert_eq!(ex.input_ids, ids);
    assert_eq!(s.tok.bos_id(), Some(1));
    assert_eq!(ex.input_ids[0], IM_START);
    assert_eq!(ex.input_ids.iter().filter(|&&i| i == IM_START).count(), 5);

    assert_eq!(
        s.trained_runs(ex),
        [
            "Paris is the capital of France.<|im_end|>",
            "Rome is the capital of Italy.<|im_end|>"
        ]
    );
    let trained: Vec<i64> = ex
        .labels
        .iter()
        .copied()
        .filter(|&y| y != IGNORE_INDEX)
        .collect();
    let trained = s.decode(&trained);
    for prompt in [
        "capital of France?",
        "Italy?",
        "one sentence",
        "user",
        "assistant",
    ] {
        assert!(!trained.contains(prompt), "{prompt:?} in {trained:?}");
    }
    // Unmasked labels equal their ids; the ends of the two answers are the two trained im_ends.
    for (&id, &y) in ex.input_ids.iter().zip(&ex.labels) {
        assert!(y == IGNORE_INDEX || y == id);
    }
    let trained_ends = ex.labels.iter().filter(|&&y| y == IM_END).count();
    assert_eq!(trained_ends, 2);
    assert_eq!(ex.input_ids.iter().filter(|&&i| i == IM_END).count(), 5);
}

/// Every format reads and is detected: Alpaca (JSONL), messages (JSON array), text, tokenized.
#[test]
fn each_format_parses_and_is_detected() {
    let s = Smol::new();

    let alpaca = s.write(
        "alpaca.jsonl",
        concat!(
            r#"{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}"#,
            "\n",
            r#"{"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be cheerful."}"#,
            "\n"
        ),
    );
    let ds = s.load(&alpaca, &opts()).unwrap();
    assert_eq!(ds.format, DataFormat::Alpaca);
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(s.trained_runs(&ds.examples[0]), ["Bonjour<|im_end|>"]);
    assert_eq!(s.trained_runs(&ds.examples[1]), ["Hi!<|im_end|>"]);
    // Without a system message SmolLM2's template inserts its own; input follows a blank line.
    let first = s.decode(&ds.examples[0].input_ids);
    assert!(
        first.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{first}"
    );
    assert!(first.contains("<|im_start|>user\nTranslate to French.\n\nGood morning<|im_end|>"));
    let second = s.decode(&ds.examples[1].input_ids);
    assert!(
        second.starts_with(
            "<|im_start|>system\nBe cheerful.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>"
        ),
        "{second}"
    );

    let messages = s.write(
        "messages.json",
        r#"[
  {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
  {"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "Blue."}]}
]"#,
    );
    let ds = s.load(&messages, &opts()).unwrap();
    assert_eq!(ds.format, DataFormat::Messages);
    assert_eq!(s.trained_runs(&ds.examples[0]), ["4<|im_end|>"]);
    assert_eq!(s.trained_runs(&ds.examples[1]), ["Blue.<|im_end|>"]);

    let text = s.write(
        "text.jsonl",
        "{\"text\": \"The quick brown fox jumps over the lazy dog.\"}\n",
    );
    let ds = s.load(&text, &opts()).unwrap();
    assert_eq!(ds.format, DataFormat::Text);
    let ex = &ds.examples[0];
    assert_eq!(ex.labels, ex.input_ids);
    // This GGUF adds neither bos nor eos to plain text.
    let plain: Vec<i64> = s
        .tok
        .encode("The quick brown fox jumps over the lazy dog.", false)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    assert_eq!(ex.input_ids, plain);

    let tokenized = s.write(
        "ids.jsonl",
        "{\"input_ids\": [1, 9690, 198, 2], \"labels\": [-100, -100, 198, 2]}\n{\"input_ids\": [5, 6]}\n",
    );
    let ds = s.load(&tokenized, &opts()).unwrap();
    assert_eq!(ds.format, DataFormat::Tokenized);
    assert_eq!(ds.examples[0].labels, [-100, -100, 198, 2]);
    assert_eq!(ds.examples[1].labels, [5, 6]);

    // The format can be forced, and a ShareGPT row in JSON-array form reads the same.
    let sharegpt = s.write("sharegpt.json", &format!("[{SHAREGPT_2_TURNS}]"));
    let forced = DatasetOptions {
        format: Some(DataFormat::ShareGpt),
        ..opts()
    };
    assert_eq!(s.load(&sharegpt, &forced).unwrap().examples.len(), 1);
}

/// `train_on_prompt` labels every token, the system and user turns included.
#[test]
fn train_on_prompt_labels_everything() {
    let s = Smol::new();
    let path = s.write("chat.jsonl", SHAREGPT_2_TURNS);
    let all = DatasetOptions {
        train_on_prompt: true,
        ..opts()
    };
    let ex = &s.load(&path, &all).unwrap().examples[0];
    assert_eq!(ex.labels, ex.input_ids);
    let masked = &s.load(&path, &opts()).unwrap().examples[0];
    assert_eq!(masked.input_ids, ex.input_ids);
    assert!(masked.target_count() < ex.target_count());
}

/// Truncation keeps the first `max_len` tokens; a row whose answers all lie past `max_len` is an
/// over-long bad row.
#[test]
fn truncation_cuts_and_drops_rows_left_without_targets() {
    let s = Smol::new();
    let path = s.write("chat.jsonl", SHAREGPT_2_TURNS);
    let full = s.load(&path, &opts()).unwrap().examples.remove(0);
    let first_target = full.labels.iter().position(|&y| y != IGNORE_INDEX).unwrap();

    let cut = first_target + 3;
    let limited = DatasetOptions {
        max_len: cut,
        ..opts()
    };
    let ex = &s.load(&path, &limited).unwrap().examples[0];
    assert_eq!(ex.input_ids, full.input_ids[..cut]);
    assert_eq!(ex.labels, full.labels[..cut]);
    assert_eq!(ex.target_count(), 3);

    let body = format!("{SHAREGPT_2_TURNS}\n{SHAREGPT_2_TURNS}\n");
    let path = s.write("two.jsonl", &body);
    let too_short = DatasetOptions {
        max_len: first_target,
        ..opts()
    };
    let (line, reason) = row_error(s.load(&path, &too_short), &path);
    assert_eq!(line, 1);
    assert!(reason.starts_with("over-long after truncation"), "{reason}");
    let err = s
        .load(
            &path,
            &DatasetOptions {
                skip_bad_rows: true,
                ..too_short
            },
        )
        .unwrap_err();
    assert!(matches!(err, DataError::Empty { ref bad_rows, .. } if bad_rows.len() == 2));
}

const GOOD: &str = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#;

/// Bad rows in a JSONL file: the first one stops the load with `path:line: reason`; skipping
/// lists them all with their lines and keeps the good rows.
#[test]
fn bad_rows_in_jsonl() {
    let s = Smol::new();
    let rows = [
        GOOD,
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}"#,
        "",
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}]}"#,
        r#"{"messages": [{"role": "user", "content": "Hi"}"#,
        r#"{"instruction": "a", "output": "b"}"#,
        r#"{"messages": [{"role": "user", "content": 5}]}"#,
        GOOD,
    ];
    let path = s.write("bad.jsonl", &rows.join("\n"));
    let (line, reason) = row_error(s.load(&path, &opts()), &path);
    assert_eq!(
        (line, reason.as_str()),
        (2, "messages[1]: empty answer: the assistant turn is blank")
    );
    let err = s.load(&path, &opts()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:2: messages[1]: empty answer: the assistant turn is blank",
            path.display()
        )
    );

    let ds = s.load(&path, &skipping()).unwrap();
    assert_eq!(ds.examples.len(), 2);
    let bad: Vec<(usize, &str)> = ds
        .bad_rows
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(bad.len(), 5, "{bad:?}");
    assert_eq!(
        bad[..2],
        [
            (2, "messages[1]: empty answer: the assistant turn is blank"),
            (
                4,
                r#"messages[1]: unknown role "tool" (system, user, assistant)"#
            )
        ]
    );
    assert_eq!(bad[2].0, 5);
    assert!(bad[2].1.starts_with("invalid JSON: "), "{}", bad[2].1);
    assert_eq!(
        bad[3],
        (
            6,
            "a row in alpaca format in a file of messages rows (detected at line 1)"
        )
    );
    assert_eq!(
        bad[4],
        (
            7,
            "messages[0]: field `content`: invalid type: integer `5`, expected a string"
        )
    );
}

/// The same in a JSON array: lines are where each element starts.
#[test]
fn bad_rows_in_a_json_array() {
    let s = Smol::new();
    let body = format!(
        "[\n  {GOOD},\n  {{\n    \"messages\": [\n      {{\"role\": \"user\", \"content\": \"Hi\"}}\n    ]\n  }},\n  {GOOD},\n  {{\"text\": \"plain\"}}\n]\n"
    );
    let path = s.write("bad.json", &body);
    let (line, reason) = row_error(s.load(&path, &opts()), &path);
    assert_eq!(
        (line, reason.as_str()),
        (3, "no assistant turn in `messages` to train on")
    );
    let ds = s.load(&path, &skipping()).unwrap();
    assert_eq!(ds.examples.len(), 2);
    let lines: Vec<usize> = ds.bad_rows.iter().map(|b| b.line).collect();
    assert_eq!(lines, [3, 9]);
    assert_eq!(
        ds.bad_rows[1].reason,
        "a row in text format in a file of messages rows (detected at line 2)"
    );

    // JSON broken inside the array cannot be skipped past.
    let broken = s.write("broken.json", &format!("[\n{GOOD},\n{GOOD}\n{GOOD}\n]"));
    let (line, reason) = row_error(s.load(&broken, &skipping()), &broken);
    assert_eq!(
        (line, reason.as_str()),
        (4, "expected `,` or `]` after an array element")
    );

    let missing = s.dir.path().join("missing.json");
    let err = s.load(&missing, &opts()).unwrap_err().to_string();
    assert!(err.contains("missing.json"), "{err}");
}

/// Over real examples: every index once per epoch, deterministic, similar lengths together;
/// collation pads on the right with ignored labels and counts the shifted targets.
#[test]
fn batches_of_loaded_examples() {
    let s = Smol::new();
    let mut body = String::new();
    for i in 0..40 {
        let question = "why ".repeat(1 + i % 7);
        let answer = "because ".repeat(1 + (i * 5) % 11);
        body.push_str(&format!(
            "{{\"instruction\": \"{question}\", \"output\": \"{answer}\"}}\n"
        ));
    }
    let path = s.write("many.jsonl", &body);
    let ds = s.load(&path, &opts()).unwrap();
    let (train, eval) = split_eval(ds.examples, 0.1, 7);
    assert_eq!((train.len(), eval.len()), (36, 4));

    let lengths: Vec<usize> = train.iter().map(|e| e.input_ids.len()).collect();
    let pad = i64::from(s.tok.pad_id().or(s.tok.eos_id()).unwrap());
    for epoch in 0..3 {
        let batches = epoch_batches(&lengths, 4, 11, epoch);
        assert_eq!(batches, epoch_batches(&lengths, 4, 11, epoch));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..train.len()).collect::<Vec<_>>());
        let mut total_targets = 0;
        for b in &batches {
            let rows: Vec<&Example> = b.iter().map(|&i| &train[i]).collect();
            let batch = collate(&rows, pad);
            assert_eq!(batch.batch, rows.len());
            assert_eq!(
                batch.seq,
                rows.iter().map(|e| e.input_ids.len()).max().unwrap()
            );
            assert_eq!(batch.input_ids.len(), batch.batch * batch.seq);
            for (r, ex) in rows.iter().enumerate() {
                let ids = &batch.input_ids[r * batch.seq..(r + 1) * batch.seq];
                let labels = &batch.labels[r * batch.seq..(r + 1) * batch.seq];
                let n = ex.input_ids.len();
                assert_eq!(ids[..n], ex.input_ids[..]);
                assert_eq!(labels[..n], ex.labels[..]);
                assert!(ids[n..].iter().all(|&i| i == pad));
                assert!(labels[n..].iter().all(|&y| y == IGNORE_INDEX));
            }
            assert_eq!(
                batch.targets,
                rows.iter().map(|e| e.target_count()).sum::<usize>()
            );
            total_targets += batch.targets;
        }
        assert_eq!(
            total_targets,
            train.iter().map(Example::target_count).sum::<usize>()
        );
    }
    assert_ne!(
        epoch_batches(&lengths, 4, 11, 0),
        epoch_batches(&lengths, 4, 11, 1)
    );
}
