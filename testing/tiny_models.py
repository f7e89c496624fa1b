"""Tiny random-weight models of real architectures, built offline for tests.

The app loads models with ``AutoModel*.from_pretrained(folder)`` and
``AutoTokenizer.from_pretrained(folder)``.  Downloading real checkpoints is not
possible in CI (no Hub access) and would be slow, so each builder here writes a
complete, loadable model folder from scratch:

* the tokenizer is trained in-process on the small built-in English + Chinese
  corpus below (``tokenizers`` / ``sentencepiece``), so nothing is fetched;
* the model uses the real architecture class with tiny dimensions and
  deterministic random weights (fixed seed, global RNG state left untouched).

The outputs of these models are gibberish by design; they exist to exercise
the loading / tokenising / generation code paths with real classes.

Every builder takes a ``pathlib.Path`` folder, writes into it (creating it if
needed) and returns the same folder.
"""

from __future__ import annotations

import json
import pathlib
import string
import warnings

# Small bilingual corpus shared by all tokenizers.  Chinese matters: the app
# translates zh -> en, so the tokenizers must know CJK characters (or, for the
# byte-level BPE, fall back to bytes).
ENGLISH_CORPUS = [
    "Hello, how are you today?",
    "I am fine, thank you. And you?",
    "The quick brown fox jumps over the lazy dog.",
    "Machine translation turns text from one language into another.",
    "This movie was wonderful and I loved every minute of it.",
    "This movie was terrible and boring; I hated it.",
    "The weather is nice today, let's go for a walk in the park.",
    "Please write a short poem about the sea.",
    "What is the capital of France? The capital of France is Paris.",
    "Transformers are neural networks that use attention.",
    "She reads a book every night before going to sleep.",
    "We are testing a tiny model with random weights.",
    "Good morning! Would you like some coffee or tea?",
    "The price of the new phone is 999 dollars.",
    "Numbers like 1, 2, 3, 42 and 2024 appear in text too.",
    "You are a helpful assistant.",
    "Can you summarize this article in three sentences?",
    "I think the food at this restaurant is great.",
    "The service was slow and the room was dirty.",
    "Learning a new language takes time and practice.",
]

CHINESE_CORPUS = [
    "你好，今天过得怎么样？",
    "我很好，谢谢你。你呢？",
    "机器翻译可以把一种语言的文字翻译成另一种语言。",
    "这部电影非常精彩，我很喜欢。",
    "这部电影很无聊，我不喜欢。",
    "今天天气很好，我们去公园散步吧。",
    "请写一首关于大海的短诗。",
    "法国的首都是哪里？法国的首都是巴黎。",
    "她每天晚上睡觉前都会读一本书。",
    "我们正在测试一个随机权重的小模型。",
    "早上好！你想喝咖啡还是茶？",
    "学习一门新语言需要时间和练习。",
    "人工智能正在改变我们的生活和工作方式。",
    "北京是中国的首都，上海是一个大城市。",
    "我喜欢吃苹果、香蕉和西瓜。",
    "他们明天要去学校上课。",
    "这家餐厅的服务很慢，房间也很脏。",
    "你能用三句话总结这篇文章吗？",
    "中文和英文都是非常重要的语言。",
    "谢谢你的帮助，再见！",
]

CORPUS = ENGLISH_CORPUS + CHINESE_CORPUS

# ChatML chat template, same shape as Qwen2 / SmolLM2-Instruct but without an
# injected default system prompt (so rendered prompts are fully predictable):
#   <|im_start|>{role}\n{content}<|im_end|>\n ... [<|im_start|>assistant\n]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Special tokens of the tiny causal LM; ids are fixed by their order here.
CAUSAL_LM_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
CAUSAL_LM_MAX_LENGTH = 256

MARIAN_MAX_LENGTH = 512
DISTILBERT_MAX_LENGTH = 512
DISTILBERT_ID2LABEL = {0: "NEGATIVE", 1: "POSITIVE"}

_SEED = 0

# _INIT_NOTE: the default init std (0.02) makes tiny random models ignore
# their input (the same greedy output / near-identical logits for every
# text).  A larger std is used so that different inputs give different
# outputs, which lets tests tell inputs apart.


def _prepare(folder) -> pathlib.Path:
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _seeded_init(model_cls, config):
    """Instantiate ``model_cls(config)`` with a fixed seed, without disturbing
    the caller's global torch RNG state (so tests stay independent)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = model_cls(config)
    return model.eval()


def build_tiny_causal_lm(folder) -> pathlib.Path:
    """Tiny LlamaForCausalLM + byte-level BPE fast tokenizer with ChatML.

    Mirrors a SmolLM2/Qwen2-Instruct style chat model: ``<|endoftext|>`` (id 0,
    also pad), ``<|im_start|>`` (id 1), ``<|im_end|>`` (id 2, eos) and a
    ChatML ``chat_template``.  Byte-level BPE means any Unicode text (Chinese,
    emoji) encodes without unknown tokens.  Context window is 256 positions
    (``max_position_embeddings`` and tokenizer ``model_max_length``) so tests
    can overflow it cheaply.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = _prepare(folder)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=768,
        min_frequency=2,
        special_tokens=CAUSAL_LM_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)

    eos, bos_like, pad = "<|im_end|>", "<|im_start|>", "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=eos,
        pad_token=pad,
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[bos_like],
        model_max_length=CAUSAL_LM_MAX_LENGTH,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    pad_id = tokenizer.convert_tokens_to_ids(pad)
    assert (pad_id, tokenizer.convert_tokens_to_ids(bos_like), eos_id) == (0, 1, 2)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CAUSAL_LM_MAX_LENGTH,
        rms_norm_eps=1e-5,
        initializer_range=0.2,  # see _INIT_NOTE
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = _seeded_init(LlamaForCausalLM, config)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_marian(folder) -> pathlib.Path:
    """Tiny MarianMTModel + MarianTokenizer (opus-mt-zh-en layout).

    ``source.spm`` / ``target.spm`` are sentencepiece unigram models trained
    on the built-in Chinese + English corpus with ``character_coverage=1.0``
    (every corpus character, incl. CJK, is a known piece).  ``vocab.json``
    follows the Opus-MT convention: ``</s>`` = 0, ``<unk>`` = 1, pieces...,
    ``<pad>`` = last id, which is also ``decoder_start_token_id``.
    """
    import io

    import sentencepiece as spm
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    folder = _prepare(folder)

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        model_type="unigram",
        vocab_size=400,
        hard_vocab_limit=False,  # corpus is small; accept fewer pieces
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=1,
        pad_id=-1,
        unk_piece="<unk>",
        eos_piece="</s>",
        num_threads=1,
        minloglevel=2,
    )
    spm_bytes = buf.getvalue()
    (folder / "source.spm").write_bytes(spm_bytes)
    (folder / "target.spm").write_bytes(spm_bytes)

    sp = spm.SentencePieceProcessor(model_proto=spm_bytes)
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if piece not in vocab:
            vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    vocab_path = folder / "vocab.json"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False, indent=2), encoding="utf-8")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sacremoses.*")
        tokenizer = MarianTokenizer(
            source_spm=str(folder / "source.spm"),
            target_spm=str(folder / "target.spm"),
            vocab=str(vocab_path),
            source_lang="zh",
            target_lang="en",
            model_max_length=MARIAN_MAX_LENGTH,
        )
    pad_id = vocab["<pad>"]
    eos_id = vocab["</s>"]

    config = MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=MARIAN_MAX_LENGTH,
        scale_embedding=True,
        init_std=0.5,  # see _INIT_NOTE
        share_encoder_decoder_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        forced_eos_token_id=eos_id,
        decoder_start_token_id=pad_id,
        bos_token_id=None,
    )
    model = _seeded_init(MarianMTModel, config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=pad_id,
        eos_token_id=eos_id,
        forced_eos_token_id=eos_id,
        pad_token_id=pad_id,
        bad_words_ids=[[pad_id]],
        max_length=MARIAN_MAX_LENGTH,
        num_beams=1,
    )

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_distilbert(folder) -> pathlib.Path:
    """Tiny DistilBertForSequenceClassification, sst-2 style labels.

    ``id2label = {0: "NEGATIVE", 1: "POSITIVE"}`` like
    distilbert-base-uncased-finetuned-sst-2-english.  Tokenizer: lowercase
    WordPiece (deterministic vocab derived from the built-in corpus) in the
    DistilBERT tokenizer class, which is ``tokenizers``-backed in v5; specials ``[PAD]``=0, ``[UNK]``=1, ``[CLS]``=2,
    ``[SEP]``=3, ``[MASK]``=4; ``model_max_length`` 512.
    """
    from tokenizers import normalizers, pre_tokenizers
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    folder = _prepare(folder)

    # WordPiece vocab built directly (the tokenizers WordPieceTrainer breaks
    # ties in hash order, so its vocab differs from run to run): specials,
    # every corpus character, "##" continuations for ASCII letters/digits
    # (so any English word can be spelled), then every whole corpus word.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = set()
    for line in CORPUS:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = set("".join(words)) | set(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = sorted(chars)
    pieces += ["##" + c for c in string.ascii_lowercase + string.digits]
    pieces += sorted(w for w in words if len(w) > 1)
    vocab = {tok: i for i, tok in enumerate(specials + pieces)}

    # The transformers class rebuilds normaliser / pre-tokeniser / [CLS] .. [SEP]
    # post-processor itself from the vocab, exactly as for a real checkpoint.
    tokenizer = DistilBertTokenizerFast(
        vocab=vocab,
        do_lower_case=True,
        model_max_length=DISTILBERT_MAX_LENGTH,
    )

    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        hidden_dim=64,
        n_layers=2,
        n_heads=4,
        initializer_range=0.2,  # see _INIT_NOTE
        max_position_embeddings=DISTILBERT_MAX_LENGTH,
        num_labels=2,
        id2label=dict(DISTILBERT_ID2LABEL),
        label2id={v: k for k, v in DISTILBERT_ID2LABEL.items()},
        pad_token_id=tokenizer.pad_token_id,
        finetuning_task="sst-2",
    )
    model = _seeded_init(DistilBertForSequenceClassification, config)

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
