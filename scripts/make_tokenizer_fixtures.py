#!/usr/bin/env python3
"""Writes the tokenizer test fixtures from the reference implementations.

  tests/fixtures/tokenizer/corpus.json         the test strings (>= 300, many scripts and edge cases)
  tests/fixtures/tokenizer/expected_ids.json   HF `tokenizers` ids and decodes for every string
  tests/fixtures/tokenizer/chat_template.json  Qwen3's jinja chat template rendered with jinja2
  tests/fixtures/tokenizer/unicode_classes.json the code points HF's regex engine (Oniguruma) puts in
                                               \p{L}, \p{N} and \s, as ranges

Usage: pip install tokenizers jinja2 && python3 scripts/make_tokenizer_fixtures.py [TOKENIZER_DIR]
TOKENIZER_DIR defaults to ../shared/data/qwen3-tokenizer next to the repository.
"""
import json
import random
import sys
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizer"


def corpus():
    s = []
    # Empty and tiny.
    s += ["", " ", "  ", "\n", "\t", "a", "A", "0", "!", "é", "中", "🙂"]
    # Latin prose and diacritics.
    s += [
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "  leading spaces and trailing spaces   ",
        "Ünïcödé Ñandú façade naïve coöperate résumé",
        "Größenordnung Straße Äpfel Öl Übermut",
        "¿Dónde está la biblioteca? ¡Aquí!",
        "Tiếng Việt có nhiều dấu: Nguyễn, Trường, Phở",
        "Zażółć gęślą jaźń; Příliš žluťoučký kůň",
        "Ça va? L'été dernier, j'ai vu l'ÉLÉPHANT.",
        "Æsir ø å ß ẞ œ Œ ŋ ð þ",
        "Mixed CASE words LikeThis and camelCaseIdentifiers and snake_case_names",
        "e-mail: someone@example.com, URL: https://example.org/path?q=1&r=two#frag",
        "C:\\Windows\\System32\\drivers\\etc\\hosts",
        "Quotes: \"double\" 'single' “curly” ‘curly’ «guillemets» „low“",
        "Dashes – — ‐ ‑ ‒ and ellipsis … and bullets • ◦",
        "Math: ∑_{i=1}^{n} x_i² ≤ ∞, ∀x ∃y: x ≠ y, √2 ≈ 1.414, π r²",
    ]
    # Scripts.
    s += [
        "你好，世界！今天天气很好。",
        "我们在北京大学学习中文和计算机科学。",
        "日本語のテキスト：ひらがな、カタカナ、漢字を含む。",
        "東京は日本の首都です。ｶﾀｶﾅ（半角）も。",
        "한국어 문장입니다. 안녕하세요, 세계!",
        "대한민국의 수도는 서울입니다.",
        "مرحبا بالعالم! هذه جملة عربية.",
        "اللغة العربية جميلة جداً ١٢٣٤٥",
        "שלום עולם! זה משפט בעברית.",
        "עִבְרִית עם ניקוד",
        "नमस्ते दुनिया! यह हिंदी वाक्य है।",
        "क़ ख़ ग़ ज़ ड़ ढ़ फ़ य़",
        "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
        "Привет, мир! Это предложение на русском языке.",
        "Ёжик в тумане, ЙОД, й, ё",
        "Γειά σου κόσμε! Αυτή είναι μια ελληνική πρόταση.",
        "ΆΈΉΊΌΎΏ ά έ ή ί ό ύ ώ ΐ ΰ",
        "Բարեւ աշխարհ",
        "გამარჯობა მსოფლიო",
        "হ্যালো বিশ্ব",
        "வணக்கம் உலகம்",
        "ሰላም ልዑል",
        "ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝐛𝐨𝐥𝐝",
        "𠀀𠀁𠀂 𪚥 𰻞",
        "Mixing scripts: English中文日本語한국어العربيةעבריתहिन्दीไทย",
    ]
    # Emoji.
    s += [
        "🙂🙃😀😃",
        "👍 👍🏻 👍🏼 👍🏽 👍🏾 👍🏿",
        "👨‍👩‍👧‍👦 family, 👩‍❤️‍💋‍👨 kiss, 🏳️‍🌈 flag, 🧑🏽‍💻 coder",
        "🇺🇸🇯🇵🇩🇪🇫🇷 flags",
        "1️⃣ 2️⃣ #️⃣ *️⃣ keycaps",
        "❤️ ❤ ☺️ ☺ text vs emoji presentation",
        "emoji🙂inside🙂words",
        "🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland tag sequence",
        "👩🏾‍🤝‍👩🏻 two women holding hands",
        "🤷‍♂️🤦🏼‍♀️🧜🏻‍♀️",
    ]
    # Whitespace and newlines.
    s += [
        "a  b   c    d",
        "tab\tseparated\tvalues\t\t\tend",
        "line1\nline2\n\nline4\n\n\n\nline8",
        "windows\r\nline\r\nendings\r\n",
        "old mac\rline\rendings",
        "   \n   \n\t\n  ",
        "trailing newline\n",
        "\n\nleading newlines",
        " \t \n \r\n ",
        "x" + " " * 50 + "y",
        "\n" * 20,
        "\t" * 12 + "deeply indented",
        "nbsp\u00a0here, ideographic\u3000space, en\u2002em\u2003thin\u2009",
        "line\u2028separator and para\u2029separator",
        "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
        "mongolian\u180evowel separator, nel\u0085next line",
        "vertical\u000btab and form\u000cfeed",
        "file\u001cgroup\u001drecord\u001eunit\u001f separators",
        "spaces before punctuation   !!!   ???",
        "    def indented():\n        return 1\n",
    ]
    # Code.
    s += [
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "import numpy as np\nx = np.arange(10)**2  # squares\nprint(f\"{x.sum():,}\")\n",
        "#include <iostream>\nint main() {\n  std::cout << \"hi\\n\";\n  return 0;\n}\n",
        "template <typename T>\nauto add(T a, T b) -> decltype(a + b) { return a + b; }",
        "fn main() {\n    let v: Vec<i32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}",
        "const f = async (x) => { await fetch(`/api/${x}`); return x?.y ?? 0; };",
        "<!DOCTYPE html>\n<html><body><div class=\"a\">Hi &amp; bye</div></body></html>",
        "{\"name\": \"cascade\", \"version\": [1, 2, 3], \"ok\": true, \"nested\": {\"k\": null}}",
        "SELECT id, name FROM users WHERE age >= 18 AND name LIKE 'A%' ORDER BY id DESC;",
        "#!/bin/bash\nfor f in *.txt; do echo \"$f\" | tr a-z A-Z; done 2>&1 >/dev/null",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hello\")\n}\n",
        "public static void main(String[] args) { System.out.println(args.length); }",
        "x += 1; y -= 2; z *= 3; w /= 4; a <<= 1; b >>= 2; c &&= d; e ||= f;",
        "if (a != b && c == d || !e) { return a->b.c[0]; } // comment /* block */",
        "\\begin{equation} E = mc^2 \\end{equation} $\\alpha + \\beta$",
        "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n-old\n+new\n",
        "```python\nprint('hi')\n```",
        "   // indented comment\n\t/* tab comment */\n",
        "0x1F 0b1010 0o777 1e-9 3.14159f 42ULL -0.0 NaN",
        "regex: ^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@\\w+\\.com$",
    ]
    # Numbers.
    for k in range(1, 26):
        s.append("".join(str((i * 7 + k) % 10) for i in range(k)))
    s += [
        "1,000,000 and 1.000.000 and 1 000 000",
        "3.14159265358979323846",
        "-42 +17 ±3 1e10 6.02e23 2^64 = 18446744073709551616",
        "Phone: +1 (555) 123-4567, ZIP 90210-1234",
        "Dates: 2024-01-15, 15/01/2024, 01.15.24, 12:34:56.789",
        "Arabic-Indic ٠١٢٣٤٥٦٧٨٩ and Persian ۰۱۲۳ and Devanagari ०१२३",
        "Fullwidth １２３４５ and circled ①②③ and superscripts x²³ and fractions ½¾",
        "Roman numerals Ⅻ ⅻ Ⅳ and Thai ๑๒๓",
        "Version v1.2.3-rc.4+build.567",
        "IPv4 192.168.0.1 and IPv6 2001:db8::ff00:42:8329",
    ]
    # Contractions, every case mix.
    s += [
        "it's IT'S It'S it'S don't DON'T Don'T",
        "I'm I'M we're WE'RE We'Re you've YOU'VE You'Ve",
        "he'll HE'LL He'Ll he'lL she'd SHE'D She'D",
        "'s 'S 't 'T 're 'RE 'Re 'rE 've 'VE 'vE 'm 'M 'll 'LL 'Ll 'lL 'd 'D",
        "rock'n'roll o'clock y'all ma'am",
        "'''triple''' ''double'' 'single'",
        "curly it’s don’t I’m (U+2019 apostrophes)",
        "long s: it'ſ and x'ſ and 'ſ",
        "'sS 'tt 'rey 'vee 'mm 'lll 'dd",
        "CAN'T WON'T SHOULDN'T'VE Y'ALL'D'VE",
    ]
    # Special and added tokens mid-text.
    s += [
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "text<|endoftext|>more text",
        "<|im_start|><|im_end|><|endoftext|>",
        "<think>\nreasoning here\n</think>\n\nanswer",
        "before<tool_call>{\"name\": \"f\"}</tool_call>after",
        "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
        "partial <|im_start and <|im_end| and |im_end|> and <im_end>",
        "<|IM_START|> uppercase is not special",
        "< |im_start| > spaced is not special",
        "<<|im_start|>> nested brackets",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n",
        "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>",
        "x <|endoftext|> y  <|endoftext|>  z",
        "<|endoftext|>",
        "<think></think>",
    ]
    # Valid UTF-8 that looks suspicious.
    s += [
        "replacement char \ufffd in text",
        "noncharacters \ufffe \uffff \ufdd0 \U0010ffff \U0001fffe",
        "private use \ue000 \uf8ff \U000f0000",
        "unassigned \u0378 \u0e5c \U0002fffd",
        "controls \x00 \x01 \x07 \x1b[31mred\x1b[0m \x7f \x80 \x9f",
        "BOM at start is a ZWNBSP",
        "\ufeffBOM at start",
        "lone combining \u0301 at start",
        "\u0301\u0302\u0303 marks only",
        "variation selectors \ufe0e\ufe0f and \U000e0100",
        "Ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ",
        "ligatures ﬁ ﬂ ﬃ ﬀ",
        "\u00c5 \u212b \u0041\u030a Ångström",
    ]
    # Combining sequences that NFC changes.
    s += [
        "e\u0301 vs \u00e9",
        "A\u030a and a\u0308 and o\u0302",
        "a\u0301\u0323 reorders to a\u0323\u0301",
        "Vie\u0323\u0302t Nam",
        "\u1100\u1161\u11a8 \u1112\u1161\u11ab \u1100\u1161 jamo",
        "\uac00\u11a8 LV syllable plus T jamo",
        "\u0915\u093c composition exclusion stays decomposed",
        "\u2126 ohm and \u212a kelvin singletons",
        "\u0344 \u0340 \u0341 \u0343 greek singletons",
        "n\u0303 in Espan\u0303a",
        "\u304b\u3099 \u30cf\u309a kana with voicing marks",
        "\u0627\u0653 \u0648\u0654 arabic composition",
        "\u0cbf\u0cd5 kannada and \u0dd9\u0dcf sinhala",
        "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333",
    ]
    # Long runs.
    s += [
        "a" * 300,
        "ab" * 150,
        "=" * 80,
        "-" * 120 + "\n" + "#" * 40,
        "the " * 100,
        "🙂" * 40,
        "中文" * 60,
        " " * 200 + "x",
        "9" * 64,
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
        "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco "
        "laboris nisi ut aliquip ex ea commodo consequat.",
    ]

    rng = random.Random(20240515)
    # Random mixes of pieces from the above alphabets and the whole code space.
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n\r   ",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "你好世界中文字符测试数据",
        "ひらがなカタカナ",
        "한국어문장",
        "مرحبابالعالم",
        "שלוםעולם",
        "नमस्तेदुनिया",
        "สวัสดีชาวโลก",
        "Приветмир",
        "Γειάσουκόσμε",
        "🙂👍🏽👨‍👩‍👧🇺🇸❤️",
        "\u0301\u0308\u0323\u030a",
        "'sStTlLdDmMvVeErR",
    ]
    for _ in range(110):
        n = rng.randint(1, 60)
        pieces = []
        for _ in range(n):
            pool = rng.choice(pools)
            pieces.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        s.append("".join(pieces))
    # Arbitrary code points (excluding surrogates): exercises \p{L}, \p{N}, \s membership broadly.
    for _ in range(40):
        chars = []
        for _ in range(rng.randint(5, 80)):
            plane = rng.random()
            if plane < 0.7:
                cp = rng.randint(0x20, 0xFFFF)
            elif plane < 0.9:
                cp = rng.randint(0x10000, 0x3FFFF)
            else:
                cp = rng.randint(0xE0000, 0x10FFFF)
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0x20
            chars.append(chr(cp))
            if rng.random() < 0.2:
                chars.append(rng.choice([" ", "  ", "\n", "'s", "1"]))
        s.append("".join(chars))
    return s


def chat_cases():
    sys_msg = {"role": "system", "content": "You are a helpful assistant."}
    cases = [
        ([{"role": "user", "content": "Hello!"}], True, True),
        ([{"role": "user", "content": "Hello!"}], True, False),
        ([{"role": "user", "content": "Hello!"}], False, True),
        ([sys_msg, {"role": "user", "content": "What is 2+2?"}], True, True),
        ([sys_msg, {"role": "user", "content": "What is 2+2?"}], True, False),
        ([sys_msg, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
          {"role": "user", "content": "Tell me a joke."}], True, True),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], False, True),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], True, False),
        # Assistant turns carrying their reasoning inline.
        ([{"role": "user", "content": "Q1"},
          {"role": "assistant", "content": "<think>\nfirst thoughts\n</think>\n\nA1"},
          {"role": "user", "content": "Q2"}], True, True),
        ([{"role": "user", "content": "Q1"},
          {"role": "assistant", "content": "<think>\nfirst thoughts\n</think>\n\nA1"}], False, True),
        ([{"role": "user", "content": "Q1"},
          {"role": "assistant", "content": "<think>\n\n</think>\n\nA1"}], False, True),
        ([{"role": "user", "content": "Q1"},
          {"role": "assistant", "content": "no think tags at all"},
          {"role": "assistant", "content": "<think>\nsecond\n</think>\nA2 continued"}], True, True),
        ([{"role": "user", "content": "Q1"},
          {"role": "assistant", "content": "\n\n<think>\n\nr1\n\n</think>\n\n\nA1\n"},
          {"role": "assistant", "content": "<think>x</think><think>y</think>A3"}], True, False),
        ([{"role": "user", "content": "Q1"},
          {"role": "assistant", "content": "only</think>after"},
          {"role": "user", "content": "Q2"},
          {"role": "assistant", "content": "<think>r</think>"}], False, True),
        # A second system message is rendered like a user turn; a first system message alone.
        ([sys_msg, {"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief."}], True, True),
        ([sys_msg], True, True),
        ([sys_msg], False, True),
        # Tool results wrapped as user turns, and user turns that look like tool results.
        ([{"role": "user", "content": "weather?"},
          {"role": "assistant", "content": "Let me check."},
          {"role": "tool", "content": "{\"temp\": 21}"},
          {"role": "tool", "content": "{\"rain\": false}"},
          {"role": "assistant", "content": "<think>\nok\n</think>\n\nIt is 21C and dry."}], True, True),
        ([{"role": "user", "content": "Q"},
          {"role": "assistant", "content": "<think>\nr\n</think>\n\nA"},
          {"role": "user", "content": "<tool_response>\nresult\n</tool_response>"},
          {"role": "assistant", "content": "<think>\nr2\n</think>\n\nB"}], True, True),
        # Unicode, empty and multi-line content.
        ([{"role": "user", "content": "你好，请用中文回答。🙂"}], True, False),
        ([{"role": "user", "content": ""}], True, True),
        ([{"role": "user", "content": "line1\nline2\n\n  indented\n"}], True, True),
        ([{"role": "user", "content": "Text with <|im_end|> inside"}], True, True),
    ]
    return cases


def regex_classes():
    """Code-point ranges matched by \\p{L}, \\p{N} and \\s in HF tokenizers' regex engine."""
    from tokenizers import Regex
    from tokenizers.pre_tokenizers import Split

    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]

    def matched(pattern):
        split = Split(Regex(pattern), behavior="removed")
        kept = set()
        for i in range(0, len(cps), 4096):
            text = "".join(chr(c) for c in cps[i:i + 4096])
            kept.update(ord(ch) for piece, _ in split.pre_tokenize_str(text) for ch in piece)
        ranges = []
        for c in cps:
            if c in kept:
                continue
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        return ranges

    return {"L": matched(r"\p{L}"), "N": matched(r"\p{N}"), "s": matched(r"\s")}


def render_chat(template, messages, add_generation_prompt, enable_thinking):
    # The environment transformers uses for chat templates.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    return env.from_string(template).render(messages=messages, tools=None,
                                            add_generation_prompt=add_generation_prompt,
                                            enable_thinking=enable_thinking)


def main():
    tok_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "qwen3-tokenizer"
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    OUT.mkdir(parents=True, exist_ok=True)

    strings = corpus()
    assert len(strings) >= 300, len(strings)
    assert len(set(strings)) == len(strings), "duplicate corpus strings"

    cases = []
    for text in strings:
        tok.encode_special_tokens = False
        ids = tok.encode(text).ids
        tok.encode_special_tokens = True
        ids_plain = tok.encode(text).ids
        tok.encode_special_tokens = False
        cases.append({
            "ids": ids,
            "ids_no_special": ids_plain,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            # The pre-tokenizer alone on the raw text (byte-level spelling): pins down the split
            # regex even where BPE happens to give the same ids for different splits.
            "pieces": [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)],
        })

    # Decodes of id sequences that cut multi-byte characters, or hold ids out of range.
    rng = random.Random(7)
    decode_cases = []
    for text in ["🙂👍🏽 ok", "中文字符", "👨‍👩‍👧‍👦", "é ñ", "नमस्ते", "<|im_start|>x🙂<|im_end|>"]:
        ids = tok.encode(text).ids
        for _ in range(4):
            a = rng.randint(0, len(ids))
            b = rng.randint(a, len(ids))
            sub = ids[a:b]
            decode_cases.append({"ids": sub, "skip_special": False, "text": tok.decode(sub, skip_special_tokens=False)})
    for ids in [[9754, 9754], [144, 145, 146, 147], [226, 227, 228], [30, 151669, 31], [151644, 872, 151645]]:
        for skip in (False, True):
            decode_cases.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})

    (OUT / "corpus.json").write_text(json.dumps(strings, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (OUT / "expected_ids.json").write_text(json.dumps({
        "generator": "scripts/make_tokenizer_fixtures.py",
        "tokenizers_version": __import__("tokenizers").__version__,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "cases": cases,
        "decode_cases": decode_cases,
    }, ensure_ascii=False) + "\n", encoding="utf-8")

    template = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    chats = []
    for messages, gen, think in chat_cases():
        text = render_chat(template, messages, gen, think)
        chats.append({"messages": messages, "add_generation_prompt": gen, "enable_thinking": think,
                      "text": text, "ids": tok.encode(text).ids})
    (OUT / "chat_template.json").write_text(json.dumps({
        "generator": "scripts/make_tokenizer_fixtures.py (jinja2 " + jinja2.__version__ + ")",
        "cases": chats}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (OUT / "unicode_classes.json").write_text(json.dumps(regex_classes()) + "\n", encoding="utf-8")
    print(f"wrote {len(strings)} strings, {len(decode_cases)} decode cases, {len(chats)} chat cases to {OUT}")


if __name__ == "__main__":
    main()
