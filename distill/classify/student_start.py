"""Where a classify student starts before distillation: the layers it is cut from (the recipe's
`student_base`, the teacher's own weights, or the packaged MiniLM) and the tokenizer that comes with
them; at `student_width`, a narrowed copy instead of a cut."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from distill.classify.importer import imported_weights
from distill.classify.io import base_tokenizer, is_bert_encoder, load_classifier, pretrained_classifier
from distill.classify.model import EncoderClassifier, narrowed_copy, truncated_copy
from distill.classify.tokenize import BatchTokenizer
from distill.registry import Manifest, Registry

if TYPE_CHECKING:
    from distill.classify.recipe import ClassifyRecipe


def with_student_start(registry: Registry, teacher: Manifest, recipe: ClassifyRecipe) -> ClassifyRecipe:
    """The recipe with an imported teacher's own weights as its `student_base` when it has none and the
    teacher was imported from a BERT-architecture folder: the lineage then says where the student began."""
    weights = imported_weights(registry, teacher)
    if recipe.student_base is None and weights is not None and is_bert_encoder(weights):
        return replace(recipe, student_base=str(weights.resolve()))
    return recipe


def student_init(
    registry: Registry, teacher: Manifest, recipe: ClassifyRecipe
) -> tuple[EncoderClassifier, BatchTokenizer]:
    """The student before training, with a new head: the first layers of the recipe's `student_base`
    when given; else of the teacher's own weights (a kdgate build); else of the packaged MiniLM (an
    ONNX import, or another architecture: classify KD needs only the teacher's outputs, so the student
    may tokenize differently). With `student_width`, built at that width from the same source."""
    recipe = with_student_start(registry, teacher, recipe)  # a sweep's points start where a build would
    if recipe.student_base is not None:
        folder = Path(recipe.student_base)
        base = pretrained_classifier(len(teacher.labels), encoder_dir=folder)
        layers = min(recipe.student_layers, base.encoder.config.num_hidden_layers)
        return _cut(base, layers, recipe), BatchTokenizer.from_dir(folder, teacher.max_length)
    if teacher.format == "torch":
        directory = registry.path(teacher.ref)
        teacher_model = load_classifier(directory)
        return _cut(teacher_model, recipe.student_layers, recipe), BatchTokenizer.from_dir(
            directory, teacher.max_length
        )
    base = pretrained_classifier(len(teacher.labels))
    return _cut(base, recipe.student_layers, recipe), BatchTokenizer(base_tokenizer(), teacher.max_length)


def _cut(source: EncoderClassifier, layers: int, recipe: ClassifyRecipe) -> EncoderClassifier:
    if recipe.student_width is None:
        return truncated_copy(source, layers)
    return narrowed_copy(source, layers, recipe.student_width, recipe.seed)


def feature_teacher(registry: Registry, teacher: Manifest, tokenizer: BatchTokenizer) -> EncoderClassifier:
    """The teacher in PyTorch, for hidden-state and attention KD, which run it on the student's tokens:
    a kdgate build's own weights, or an import's Hugging Face folder (its encoder is what is matched).
    A ValueError when there are none (an ONNX-only import) or the two tokenize differently (a
    `student_base` with another vocabulary), since then no token of one lines up with the other's."""
    weights = imported_weights(registry, teacher)
    if teacher.format == "torch":
        folder = registry.path(teacher.ref)
        model = load_classifier(folder)
    elif weights is not None and is_bert_encoder(weights):
        folder = weights
        model = pretrained_classifier(len(teacher.labels), encoder_dir=weights).eval()
    else:
        raise ValueError(
            f"hidden/attention KD needs the teacher's PyTorch weights: {teacher.ref} has none "
            "(import its Hugging Face folder, or use losses ['logits'])"
        )
    probe = ["Hidden-state KD lines tokens up, one by one.", "naïve café 2024 #kdgate"]
    own, theirs = tokenizer(probe), BatchTokenizer.from_dir(folder, teacher.max_length)(probe)
    if any(a.shape != b.shape or (a != b).any() for a, b in zip(own, theirs, strict=True)):
        raise ValueError(
            f"hidden/attention KD needs a student that tokenizes as {teacher.ref} does; "
            "this student_base does not (use losses ['logits'])"
        )
    return model
