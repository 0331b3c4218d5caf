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
    from distill.classify.build import ClassifyRecipe


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
