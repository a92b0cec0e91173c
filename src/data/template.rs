//! Chat templates: a conversation -> the text the model was trained on, rendered with minijinja
//! from the model's own Hugging Face `chat_template` (from `tokenizer_config.json` or GGUF
//! `tokenizer.chat_template`) or from a built-in preset ([`ChatTemplate::preset`]: `chatml`,
//! `llama2`, `alpaca`, `vicuna`).
//!
//! The environment copies what transformers' `apply_chat_template` sets up: `trim_blocks` and
//! `lstrip_blocks`, Python string/dict methods (`.strip()`, `.split()`, `.items()`, ... through
//! minijinja-contrib's pycompat), `raise_exception(msg)`, `strftime_now(fmt)` (UTC), loop controls,
//! a `tojson` filter that writes what Python's `json.dumps(ensure_ascii=False)` writes (no HTML
//! escaping; `indent=`), and `{% generation %}` blocks (treated as plain blocks). Variables:
//! `messages` (`[{role, content}]`, keys in that order), `add_generation_prompt`, `bos_token`,
//! `eos_token`.
//!
//! # Assistant spans (for loss masks)
//!
//! [`ChatTemplate::render_with_spans`] also returns, per assistant message, the byte range of its
//! content plus the end-of-turn token that follows it (the part a fine-tune trains on). It works on
//! arbitrary templates in two ways, the second when the first can't be trusted:
//! 1. **Sentinels.** Each assistant content is wrapped in two private-use characters (U+E000,
//!    U+E001) and the conversation rendered once; removing the sentinels gives the text and their
//!    positions give the spans. This is accepted only if the text equals the plain rendering and
//!    every message produced exactly one pair, so a template that inspects or rewrites the content
//!    (`.strip()` on padded content, `split('</think>')`) falls through to
//! 2. **Prefixes.** For assistant message `i`, the rendering of `messages[..i]` with the generation
//!    prompt must be a prefix of the full rendering; the content (trimmed) is searched right after
//!    it.
//!
//! Either way the span is then extended over whitespace and the end-of-turn string
//! ([`ChatTemplate::end_of_turn`]) when it follows the content. Spans are byte offsets into the
//! rendered text, the same unit as [`super::tokenizer::Tokenizer::encode_with_offsets`];
//! [`assistant_token_mask`] turns both into a per-token mask.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// Errors from compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("chat template does not compile: {0}")]
    Compile(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
    #[error("unknown chat template preset {0:?} (chatml, llama2, alpaca, vicuna)")]
    UnknownPreset(String),
    #[error("cannot locate assistant message {index} in the rendered chat: {reason}")]
    Span { index: usize, reason: String },
}

/// One chat turn, as in HF `messages`: `role` is `system`, `user` or `assistant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A rendered conversation and, per assistant message in order, the byte range of its content
/// plus end-of-turn token in `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub assistant_spans: Vec<Range<usize>>,
}

/// A compiled chat template with the special tokens it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// `None`: the eos token ends a turn.
    end_of_turn: Option<String>,
    /// Where the source came from, which errors name: a file, or `chat` for a given string.
    name: String,
}
const SPAN_START: char = '\u{E000}';
const SPAN_END: char = '\u{E001}';

/// `<|im_start|>role\ncontent<|im_end|>\n` per message (OpenAI ChatML, as SmolLM2 / Qwen use it,
/// without a default system message).
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Meta's Llama-2-chat template (`meta-llama/Llama-2-7b-chat-hf`):
/// `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...`.
const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

/// Stanford Alpaca's prompt: preamble (or the system message), `### Instruction:\n{user}\n\n`,
/// `### Response:\n{assistant}{eos}\n\n`.
const ALPACA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% set loop_messages = messages[1:] %}{% else %}{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' }}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}";

/// FastChat's `vicuna_v1.1`: `{system} USER: {user} ASSISTANT: {assistant}</s>USER: ...`.
const VICUNA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}{% else %}{% set system_message = \"A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.\" %}{% set loop_messages = messages %}{% endif %}{{ system_message + ' ' }}{% for message in loop_messages %}{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

impl FromStr for ChatTemplate {
    type Err = Error;

    fn from_str(source: &str) -> Result<Self, Error> {
        Self::new(source)
    }
}

impl ChatTemplate {
    /// Compiles an HF-style Jinja `chat_template`. bos/eos render as `""` until
    /// [`ChatTemplate::with_special_tokens`]; the end-of-turn string is guessed from the template
    /// (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`), else it is the eos token.
    pub fn new(source: &str) -> Result<Self, Error> {
        Self::named(source, "chat")
    }

    /// [`ChatTemplate::new`] for a template read from `origin` (a file, or a GGUF key), which
    /// its compile and render errors name with the line: `(in origin:line)`.
    pub fn named(source: &str, origin: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Chat templates produce plain text; minijinja would pick JSON or HTML escaping from
        // the template's name (`tokenizer_config.json`), as transformers never does.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(origin.to_string(), without_generation_tags(source))
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        let end_of_turn = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"]
            .into_iter()
            .find(|t| source.contains(t))
            .map(str::to_string);
        Ok(Self {
            env,
            bos_token: String::new(),
            eos_token: String::new(),
            end_of_turn,
            name: origin.to_string(),
        })
    }

    /// A built-in template: `chatml` (end of turn `<|im_end|>`), `llama2` (bos `<s>`, eos `</s>`),
    /// `alpaca` and `vicuna` (eos `</s>`, no bos: set it with
    /// [`ChatTemplate::with_special_tokens`] to match a model's tokenizer).
    pub fn preset(name: &str) -> Result<Self, Error> {
        let (source, bos, eos) = match name {
            "chatml" => (CHATML, "", "<|im_end|>"),
            "llama2" => (LLAMA2, "<s>", "</s>"),
            "alpaca" => (ALPACA, "", "</s>"),
            "vicuna" => (VICUNA, "", "</s>"),
            other => return Err(Error::UnknownPreset(other.to_string())),
        };
        Ok(Self::new(source)?.with_special_tokens(bos, eos))
    }

    /// Sets `bos_token` / `eos_token` (usually the tokenizer's).
    pub fn with_special_tokens(mut self, bos: impl Into<String>, eos: impl Into<String>) -> Self {
        self.bos_token = bos.into();
        self.eos_token = eos.into();
        self
    }

    /// Sets the string that ends an assistant turn (the stop token for generation).
    pub fn with_end_of_turn(mut self, end_of_turn: impl Into<String>) -> Self {
        self.end_of_turn = Some(end_of_turn.into());
        self
    }

    /// The string that ends an assistant turn: what generation stops at and what the loss span
    /// includes (`<|im_end|>` for ChatML, the eos token when the template names none).
    pub fn end_of_turn(&self) -> &str {
        self.end_of_turn.as_deref().unwrap_or(&self.eos_token)
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant header so the model
    /// continues with an answer.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        self.render_values(
            messages
                .iter()
                .map(|m| message_value(m, &m.content))
                .collect(),
            add_generation_prompt,
        )
    }

    /// Renders a whole conversation (no generation prompt) with the span of every assistant
    /// message's content + end of turn (see the module doc for the method).
    pub fn render_with_spans(&self, messages: &[Message]) -> Result<Rendered, Error> {
        let text = self.render(messages, false)?;
        let assistants: Vec<usize> = (0..messages.len())
            .filter(|&i| messages[i].role == "assistant")
            .collect();
        let spans = match self.spans_by_sentinels(messages, &text, assistants.len())? {
            Some(spans) => spans,
            None => self.spans_by_prefixes(messages, &text, &assistants)?,
        };
        let spans = spans
            .into_iter()
            .map(|s| self.extend_over_end_of_turn(&text, s))
            .collect();
        Ok(Rendered {
            text,
            assistant_spans: spans,
        })
    }

    fn render_values(
        &self,
        messages: Vec<Value>,
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        let template = self
            .env
            .get_template(&self.name)
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        template
            .render(ctx)
            .map_err(|e| Error::Render(format!("{e:#}")))
    }

    /// Method 1: `None` when the sentinel rendering can't be trusted for this template/chat.
    fn spans_by_sentinels(
        &self,
        messages: &[Message],
        plain: &str,
        n_assistant: usize,
    ) -> Result<Option<Vec<Range<usize>>>, Error> {
        let has_sentinel = |s: &str| s.contains([SPAN_START, SPAN_END]);
        if messages.iter().any(|m| has_sentinel(&m.content)) {
            return Ok(None);
        }
        let values = messages
            .iter()
            .map(|m| {
                if m.role == "assistant" {
                    message_value(m, &format!("{SPAN_START}{}{SPAN_END}", m.content))
                } else {
                    message_value(m, &m.content)
                }
            })
            .collect();
        let Ok(marked) = self.render_values(values, false) else {
            return Ok(None);
        };
        let mut text = String::with_capacity(marked.len());
        let mut spans = Vec::new();
        let mut open: Option<usize> = None;
        for c in marked.chars() {
            match (c, open) {
                (SPAN_START, None) => open = Some(text.len()),
                (SPAN_END, Some(start)) => {
                    spans.push(start..text.len());
                    open = None;
                }
                (SPAN_START | SPAN_END, _) => return Ok(None),
                _ => text.push(c),
            }
        }
        let trusted = open.is_none() && spans.len() == n_assistant && text == plain;
        Ok(trusted.then_some(spans))
    }

    /// Method 2: each assistant message right after the rendering of the turns before it.
    fn spans_by_prefixes(
        &self,
        messages: &[Message],
        text: &str,
        assistants: &[usize],
    ) -> Result<Vec<Range<usize>>, Error> {
        let mut spans = Vec::with_capacity(assistants.len());
        for &i in assistants {
            let prefix = self.render(&messages[..i], true)?;
            if !text.starts_with(&prefix) {
                return Err(Error::Span {
                    index: i,
                    reason: "the rendering of the earlier turns is not a prefix of the full \
                             rendering, and the content is not rendered verbatim"
                        .into(),
                });
            }
            let content = messages[i].content.trim();
            let after = &text[prefix.len()..];
            if let Some(offset) = after.find(content).filter(|_| !content.is_empty()) {
                let start = prefix.len() + offset;
                spans.push(start..start + content.len());
                continue;
            }
            // The template rewrote the content: take what this turn adds to the rendering, up to
            // and including its end of turn.
            let upto = self.render(&messages[..=i], false)?;
            let Some(added) = text
                .get(prefix.len()..upto.len())
                .filter(|_| text.starts_with(&upto))
            else {
                return Err(Error::Span {
                    index: i,
                    reason: "its content is rewritten and its turn is not a prefix of the chat"
                        .into(),
                });
            };
            let eot = self.end_of_turn();
            let lead = added.len() - added.trim_start().len();
            let end = match added.find(eot).filter(|_| !eot.is_empty()) {
                Some(at) => at + eot.len(),
                None => added.len(),
            };
            spans.push(prefix.len() + lead..prefix.len() + end.max(lead));
        }
        Ok(spans)
    }

    /// `content` -> `content` + whitespace + end of turn, when the end of turn follows.
    fn extend_over_end_of_turn(&self, text: &str, span: Range<usize>) -> Range<usize> {
        let eot = self.end_of_turn();
        if eot.is_empty() || text[span.clone()].ends_with(eot) {
            return span;
        }
        let rest = &text[span.end..];
        let gap = rest.len() - rest.trim_start().len();
        if rest[gap..].starts_with(eot) {
            span.start..span.end + gap + eot.len()
        } else {
            span
        }
    }
}

/// Per token: does it overlap an assistant span (train on it) or not (mask it)?
///
/// `offsets` are the tokens' byte ranges in the rendered text (from
/// `Tokenizer::encode_with_offsets`), `spans` from [`ChatTemplate::render_with_spans`]. Overlap,
/// not containment: a SentencePiece token `▁Red` starts at the space the template writes before
/// the content.
pub fn assistant_token_mask(offsets: &[(usize, usize)], spans: &[Range<usize>]) -> Vec<bool> {
    offsets
        .iter()
        .map(|&(start, end)| end > start && spans.iter().any(|s| start < s.end && end > s.start))
        .collect()
}

/// A message as a map whose keys keep HF's order (`role`, `content`) for `tojson` and `.items()`.
#[derive(Debug)]
struct MessageObject {
    role: String,
    content: String,
}

impl Object for MessageObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.role.as_str())),
            "content" => Some(Value::from(self.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

fn message_value(m: &Message, content: &str) -> Value {
    Value::from_object(MessageObject {
        role: m.role.clone(),
        content: content.to_string(),
    })
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' assistant-mask extension) become a
/// plain `{% if true %}` block, keeping their whitespace control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..close];
        let left = if inner.starts_with(['-', '+']) {
            &inner[..1]
        } else {
            ""
        };
        let right = if inner.ends_with(['-', '+']) {
            &inner[inner.len() - 1..]
        } else {
            ""
        };
        let word = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        match word {
            "generation" => out.push_str(&format!("{{%{left} if true {right}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{left} endif {right}%}}")),
            _ => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`: `", "` / `": "` separators
/// without indent, `","` / `": "` with it; keys in the map's order.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for compatibility; ensure_ascii=False and insertion order are what HF uses.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    value: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    let json_err =
        |e: serde_json::Error| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string());
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let name = key
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| key.to_string());
                out.push_str(&serde_json::to_string(&name).map_err(json_err)?);
                out.push_str(": ");
                write_json(&value.get_item(key)?, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        _ => out.push_str(&serde_json::to_string(value).map_err(json_err)?),
    }
    Ok(())
}

/// `strftime_now(format)`: the current UTC time through a strftime subset (`%Y %y %m %d %e %B %b
/// %A %a %H %M %S %j %%`), as Llama-3.x templates use for "Today Date".
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(secs, &format)
}

fn strftime(unix_secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day_of_year = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs_of_day % 60)),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Vec<Message> {
        vec![
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Bye"),
            Message::new("assistant", "See you."),
        ]
    }

    fn span_texts(r: &Rendered) -> Vec<&str> {
        r.assistant_spans
            .iter()
            .map(|s| &r.text[s.clone()])
            .collect()
    }

    #[test]
    fn chatml_renders_and_spans() {
        let t = ChatTemplate::preset("chatml").unwrap();
        let r = t.render_with_spans(&chat()).unwrap();
        assert_eq!(
            r.text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nSee you.<|im_end|>\n"
        );
        assert_eq!(span_texts(&r), ["Hello!<|im_end|>", "See you.<|im_end|>"]);
        assert_eq!(t.end_of_turn(), "<|im_end|>");
        let prompt = t.render(&chat()[..1], true).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama2_renders_system_and_strips() {
        let t = ChatTemplate::preset("llama2").unwrap();
        let mut msgs = vec![Message::new("system", "Be brief.")];
        msgs.extend(chat());
        msgs[2].content = "  Hello!  ".into(); // stripped by the template: prefix method
        let r = t.render_with_spans(&msgs).unwrap();
        assert_eq!(
            r.text,
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST] See you. </s>"
        );
        assert_eq!(span_texts(&r), ["Hello! </s>", "See you. </s>"]);
        let bad = [Message::new("assistant", "x")];
        assert!(matches!(t.render(&bad, false), Err(Error::Render(e)) if e.contains("alternate")));
    }

    #[test]
    fn alpaca_and_vicuna() {
        let t = ChatTemplate::preset("alpaca").unwrap();
        let r = t.render_with_spans(&chat()[..2]).unwrap();
        assert_eq!(
            r.text,
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n"
        );
        assert_eq!(span_texts(&r), ["Hello!</s>"]);
        assert!(
            t.render(&chat()[..1], true)
                .unwrap()
                .ends_with("### Instruction:\nHi\n\n### Response:\n")
        );

        let t = ChatTemplate::preset("vicuna")
            .unwrap()
            .with_special_tokens("<s>", "</s>");
        let r = t.render_with_spans(&chat()).unwrap();
        assert_eq!(
            r.text,
            "<s>A chat between a curious user and an artificial intelligence assistant. The \
             assistant gives helpful, detailed, and polite answers to the user's questions. \
             USER: Hi ASSISTANT: Hello!</s>USER: Bye ASSISTANT: See you.</s>"
        );
        assert_eq!(span_texts(&r), ["Hello!</s>", "See you.</s>"]);
        assert!(
            t.render(&chat()[..1], true)
                .unwrap()
                .ends_with("USER: Hi ASSISTANT:")
        );
        assert!(ChatTemplate::preset("zephyr").is_err());
    }

    #[test]
    fn hf_features() {
        let src = "{%- for m in messages -%}\n  {{ m.role | upper }}:{{ m['content'].strip() }}|{{ m | tojson }}\n{% endfor %}{{ strftime_now('%Y') | length }}{% generation %}x{% endgeneration %}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(&[Message::new("user", " a<b \"q\" ")], false)
            .unwrap();
        assert_eq!(
            out,
            "USER:a<b \"q\"|{\"role\": \"user\", \"content\": \" a<b \\\"q\\\" \"}\n4x"
        );
        let t = ChatTemplate::new("{{ messages | tojson(indent=2) }}").unwrap();
        let out = t.render(&[Message::new("user", "é")], false).unwrap();
        assert_eq!(
            out,
            "[\n  {\n    \"role\": \"user\",\n    \"content\": \"é\"\n  }\n]"
        );
        assert!(matches!(
            ChatTemplate::new("{% if %}"),
            Err(Error::Compile(_))
        ));
    }

    /// A template read from a file names that file (and the line) when it fails to compile
    /// or to render, and a runaway template is stopped, not run.
    #[test]
    fn errors_name_where_the_template_came_from() {
        let origin = "model/tokenizer_config.json";
        // Rendered as plain text whatever the name's extension (not JSON-escaped).
        let t = ChatTemplate::named("{{ messages[0].content }}<\"&>", origin).unwrap();
        let quoted = [Message::new("user", "a \"b\" <c>")];
        assert_eq!(t.render(&quoted, false).unwrap(), "a \"b\" <c><\"&>");
        let e = ChatTemplate::named("{{ 1 }}\n{% if %}", origin).unwrap_err();
        assert!(
            e.to_string().contains("(in model/tokenizer_config.json:2)"),
            "{e}"
        );
        let hi = [Message::new("user", "hi")];
        for (source, why) in [
            (
                "{{ raise_exception('needs a system turn') }}",
                "needs a system turn",
            ),
            ("{% for i in range(100000000) %}x{% endfor %}", "too many"),
            (
                "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
                "recursion",
            ),
        ] {
            let t = ChatTemplate::named(source, origin).unwrap();
            let e = t.render(&hi, true).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("(in model/tokenizer_config.json:1)"),
                "{e}"
            );
        }
    }

    #[test]
    fn template_that_rewrites_content_uses_prefixes() {
        // Drops a "<think>...</think>" preamble from assistant content: sentinels break, prefixes work.
        let src = "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<end>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let t = ChatTemplate::new(src).unwrap().with_end_of_turn("<end>");
        let msgs = [
            Message::new("user", "q"),
            Message::new("assistant", "<think>hm</think>A."),
        ];
        let r = t.render_with_spans(&msgs).unwrap();
        assert_eq!(r.text, "<user>q<end><assistant>A.<end>");
        assert_eq!(span_texts(&r), ["A.<end>"]);
    }

    #[test]
    fn token_mask_from_offsets() {
        let spans = [5..10, 13..14];
        let offsets = [(0, 0), (0, 5), (4, 6), (6, 10), (10, 12), (12, 14)];
        assert_eq!(
            assistant_token_mask(&offsets, &spans),
            [false, false, true, true, false, true]
        );
    }

    #[test]
    fn strftime_known_dates() {
        assert_eq!(
            strftime(0, "%Y-%m-%d %H:%M:%S %A %j"),
            "1970-01-01 00:00:00 Thursday 001"
        );
        // 2024-07-26 12:34:56 UTC, a Friday, day 208 of a leap year.
        assert_eq!(
            strftime(1_721_997_296, "%d %b %Y %a %j %y"),
            "26 Jul 2024 Fri 208 24"
        );
    }
}
