"""UNIMAL's teachers: the MetaMorph and ModuMorph transformers of the HyperDistill paper.

The networks are kdistill's generic token transformers (``kdistill.teachers.transformer``) over UNIMAL's layout:
12 limb tokens of 52 features (state and morphology), 2 actions per limb, 53 context features per
limb for ModuMorph. ``paper`` is the reference flat-terrain teacher (reference section 3.1: d_model
128, 5 pre-LN layers, 2 heads, feed-forward 1024, no positional embedding, no dropout; 1,656,322 actor
parameters); ``cpu`` is the compact teacher sized for 2 CPU cores (docs/teacher.md).
"""

from __future__ import annotations

from kdistill import TeacherSpec
from kdistill.teachers.transformer import ModuMorphTeacherConfig, TransformerTeacherConfig, build_modumorph_teacher, build_transformer_teacher

METAMORPH = TeacherSpec(
    name="metamorph",
    build=build_transformer_teacher,
    config_cls=TransformerTeacherConfig,
    description="MetaMorph transformer over limb tokens (state + morphology), separate critic",
)

MODUMORPH = TeacherSpec(
    name="modumorph",
    build=build_modumorph_teacher,
    config_cls=ModuMorphTeacherConfig,
    description="ModuMorph transformer: per-limb embedding/decoder written from morphology, context-fixed attention",
)

TEACHERS = {spec.name: spec for spec in (METAMORPH, MODUMORPH)}
