"""Word- and character-level text attacks: TextAttack's recipes through its Hugging Face model wrapper.

Each recipe is its own attack name (`deepwordbug`, `pruthi`, `textbugger`, `textfooler`, `pwws`, `bae`,
`bert_attack`). The attack is run, one sentence at a time, on the examples the model classifies
correctly; an example counts as broken when TextAttack returns a successful (or skipped) result.

Statistics follow TextAttack's own definitions (textattack.metrics) and are returned as additive
numbers that evaluation sums over batches:
- `attacked` = succeeded + failed (skipped examples are not attacked), `succeeded`, `failed`, `skipped`;
  attack success rate = succeeded / attacked.
- `queries_sum` / `queries_count`: model queries, over examples that were not skipped.
- `perturbed_pct_sum` / `perturbed_pct_count`: percentage of words changed, over successful attacks
  that changed at least one word.
- `words_sum` / `words_count`: words per input, over every attacked example.
Accuracy under attack is the evaluation's accuracy (clean-correct and not broken, over all examples).

Offline: DeepWordBug and Pruthi (character edits) need nothing beyond NLTK's stopwords, which
`import textattack` itself needs. The others need downloads (counter-fitted embeddings, the Universal
Sentence Encoder from TF Hub, BERT's masked LM, WordNet). When one is missing, building the attack
(which the runner does before training) stops with one line naming it; `download=true` lets
TextAttack fetch what it needs instead.

The model is queried with the model's own tokenization (`TextClassifier.encode`: dynamic padding,
the task's maximum length) rather than the wrapper's default padding to 512 tokens, which gives the
same logits at a fraction of the cost.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import tempfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from suite.attacks.base import Attack, AttackResult
from suite.errors import UserError
from suite.params import Param, at_least_one
from suite.registry import ATTACKS

NLTK_HINT = "set NLTK_DATA to a folder holding corpora/stopwords.zip (in this project: ../shared/data/nltk_data)"


# --- resources ---------------------------------------------------------------------------------------
# Each check returns None when the resource is usable offline, else a short description of what is
# missing (used in the one-line error).

def _textattack_cache() -> Path:
    return Path(os.environ.get("TA_CACHE_DIR", os.path.expanduser("~/.cache/textattack")))


@lru_cache(maxsize=None)
def _nltk_has(probe: str) -> bool:
    import nltk

    try:
        if probe == "stopwords":
            from nltk.corpus import stopwords
            stopwords.words("english")
        elif probe == "wordnet":
            from nltk.corpus import wordnet
            wordnet.synsets("good")
        elif probe == "tagger":
            nltk.pos_tag(["a", "test"], tagset="universal")
        return True
    except LookupError:
        return False


def check_textattack() -> str | None:
    """What every recipe needs: the textattack package and NLTK's stopwords (read at import)."""
    if importlib.util.find_spec("textattack") is None:
        return "the textattack package is not installed (pip install 'suite[text]')"
    if importlib.util.find_spec("nltk") is None or not _nltk_has("stopwords"):
        return f"TextAttack needs NLTK's stopwords corpus, which NLTK cannot find: {NLTK_HINT}"
    return None


def _counterfitted() -> str | None:
    path = _textattack_cache() / "word_embeddings" / "paragramcf"
    return None if path.exists() else f"counter-fitted word embeddings (TextAttack's word_embeddings/paragramcf, not in {path.parent})"


USE_URL = "https://tfhub.dev/google/universal-sentence-encoder/3"


def _use() -> str | None:
    if importlib.util.find_spec("tensorflow_hub") is None or importlib.util.find_spec("tensorflow") is None:
        return "the Universal Sentence Encoder (needs tensorflow and tensorflow_hub, not installed, and tfhub.dev)"
    cache = Path(os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules")
    if not (cache / hashlib.sha1(USE_URL.encode()).hexdigest()).exists():
        return f"the Universal Sentence Encoder ({USE_URL}, not in the TF Hub cache {cache})"
    return None


def _bert_mlm() -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return "BERT's masked language model bert-base-uncased (huggingface_hub is not installed)"
    config = try_to_load_from_cache("bert-base-uncased", "config.json")
    weights = [try_to_load_from_cache("bert-base-uncased", f) for f in ("model.safetensors", "pytorch_model.bin")]
    if isinstance(config, str) and any(isinstance(w, str) for w in weights):
        return None
    return "BERT's masked language model bert-base-uncased (not in the Hugging Face cache)"


def _wordnet() -> str | None:
    return None if _nltk_has("wordnet") else "NLTK's WordNet corpus (corpora/wordnet; Debian's wordnet-base has the files)"


def _pos_tagger() -> str | None:
    return None if _nltk_has("tagger") else "NLTK's part-of-speech tagger (taggers/averaged_perceptron_tagger_eng and taggers/universal_tagset)"


@dataclass(frozen=True)
class Recipe:
    name: str
    cls: str                      # class in textattack.attack_recipes
    label: str
    description: str
    needs: tuple[Callable[[], str | None], ...] = ()


RECIPES = (
    Recipe("deepwordbug", "DeepWordBugGao2018", "DeepWordBug",
           "TextAttack DeepWordBug (Gao et al. 2018): character swaps/substitutions/deletions/insertions, greedy by word importance"),
    Recipe("pruthi", "Pruthi2019", "Pruthi",
           "TextAttack Pruthi et al. 2019: one keyboard-typo word (swap, delete, insert, QWERTY), greedy search"),
    Recipe("textbugger", "TextBuggerLi2018", "TextBugger",
           "TextAttack TextBugger (Li et al. 2019): character bugs and embedding neighbours, USE-constrained",
           (_counterfitted, _use)),
    Recipe("textfooler", "TextFoolerJin2019", "TextFooler",
           "TextAttack TextFooler (Jin et al. 2020): counter-fitted synonyms, POS and USE constraints",
           (_counterfitted, _pos_tagger, _use)),
    Recipe("pwws", "PWWSRen2019", "PWWS",
           "TextAttack PWWS (Ren et al. 2019): WordNet synonyms by probability-weighted word saliency",
           (_wordnet,)),
    Recipe("bae", "BAEGarg2019", "BAE",
           "TextAttack BAE-R (Garg & Ramakrishnan 2020): BERT masked-LM replacements, POS and USE constraints",
           (_bert_mlm, _pos_tagger, _use)),
    Recipe("bert_attack", "BERTAttackLi2020", "BERT-Attack",
           "TextAttack BERT-Attack (Li et al. 2020): BERT masked-LM replacements, USE constraint",
           (_bert_mlm, _use)),
)


# --- the model wrapper -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _wrapper_class():
    import torch
    from textattack.models.wrappers import HuggingFaceModelWrapper

    class SuiteModelWrapper(HuggingFaceModelWrapper):
        """TextAttack's Hugging Face wrapper, queried with the model's own tokenization."""

        def __init__(self, model):
            super().__init__(model.net, model.tokenizer)
            self.classifier = model

        def __call__(self, text_input_list):
            device = next(self.classifier.parameters()).device
            enc = self.classifier.encode(text_input_list)
            with torch.no_grad():
                logits = self.classifier(input_ids=enc["input_ids"].to(device),
                                         attention_mask=enc["attention_mask"].to(device))
            return logits.float().cpu()

    return SuiteModelWrapper


def _import_textattack():
    problem = check_textattack()
    if problem:
        raise UserError(problem)
    import textattack  # noqa: F401  (slow: imports flair and friends)
    return textattack


# --- the attacks -------------------------------------------------------------------------------------

class TextAttackRecipe(Attack):
    recipe: Recipe
    modalities = ("text",)
    threat = "text edits"
    params = {
        "query_budget": Param(int, None, "maximum model queries per example (default: unlimited)",
                              check=at_least_one, optional=True),
        "seed": Param(int, 0, "seed of the recipe's random edits (mixed with a hash of each sentence)"),
        "download": Param(bool, False, "let TextAttack download missing resources (needs network access)"),
    }

    def __init__(self, adapter, **params):
        super().__init__(adapter, **params)
        self._built: tuple[int, object] | None = None
        problem = check_textattack()
        missing = [] if self.p["download"] else [m for m in (need() for need in self.recipe.needs) if m]
        if problem:
            raise UserError(f"attack {self.name}: {problem}")
        if missing:
            raise UserError(f"attack {self.name} needs resources that are not available offline: "
                            f"{'; '.join(missing)}. Offline, use deepwordbug or pruthi; with network access, "
                            f"let TextAttack download them with {self.name}:download=true")

    def label(self) -> str:
        budget = self.p["query_budget"]
        return self.recipe.label + (f" (<= {budget} queries)" if budget else "")

    def _attack_for(self, model):
        """Build the TextAttack attack once per model object; its query caches are cleared per call."""
        if self._built is None or self._built[0] != id(model):
            textattack = _import_textattack()
            recipe_cls = getattr(textattack.attack_recipes, self.recipe.cls)
            try:
                attack = recipe_cls.build(_wrapper_class()(model))
            except Exception as e:  # a download TextAttack could not make, at run time
                raise UserError(f"attack {self.name}: TextAttack could not build {self.recipe.cls}: "
                                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
            if self.p["query_budget"]:
                attack.goal_function.query_budget = self.p["query_budget"]
            self._built = (id(model), attack)
        attack = self._built[1]
        attack.clear_cache()  # the weights may have changed since the last call
        return attack

    def run(self, model, batch):
        import torch
        from textattack.attack_results import FailedAttackResult, SkippedAttackResult, SuccessfulAttackResult

        attack = self._attack_for(model)
        texts, labels = batch["text"], batch["labels"].tolist()
        success = torch.zeros(len(texts), dtype=torch.bool)
        stats = dict.fromkeys(("attacked", "succeeded", "failed", "skipped", "queries_sum", "queries_count",
                               "perturbed_pct_sum", "perturbed_pct_count", "words_sum", "words_count"), 0.0)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            for i, (text, label) in enumerate(zip(texts, labels)):
                # The recipes' random edits draw from `random` and numpy: seed them per sentence so a
                # result does not depend on batching or on resuming.
                s = (zlib.crc32(text.encode("utf-8")) + 1_000_003 * self.p["seed"]) % 2**32
                random.seed(s)
                np.random.seed(s)
                result = attack.attack(text, int(label))
                words = len(result.original_result.attacked_text.words)
                stats["words_sum"] += words
                stats["words_count"] += 1
                if isinstance(result, SkippedAttackResult):
                    stats["skipped"] += 1
                    success[i] = True  # misclassified to begin with: not robust
                    continue
                stats["attacked"] += 1
                stats["queries_sum"] += result.num_queries
                stats["queries_count"] += 1
                if isinstance(result, SuccessfulAttackResult):
                    stats["succeeded"] += 1
                    success[i] = True
                    changed = len(result.original_result.attacked_text.all_words_diff(
                        result.perturbed_result.attacked_text))
                    pct = 100.0 * changed / words if words else 0.0
                    if pct > 0:  # TextAttack averages the percentages that are > 0
                        stats["perturbed_pct_sum"] += pct
                        stats["perturbed_pct_count"] += 1
                elif isinstance(result, FailedAttackResult):
                    stats["failed"] += 1
                else:  # e.g. a maximized result: not a success for a classification goal
                    stats["failed"] += 1
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return AttackResult(success=success, adversarial=None, extra=stats)


def _register(recipe: Recipe) -> None:
    cls = type(f"TextAttack_{recipe.cls}", (TextAttackRecipe,), {
        "description": recipe.description, "recipe": recipe,
        "__doc__": recipe.description,
    })
    ATTACKS.register(recipe.name, cls)


for _r in RECIPES:
    _register(_r)
