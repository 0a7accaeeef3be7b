"""SFT data generator: one-sentence paraphrases (CORRECT) and MEDEC error notes with reasoning (INCORRECT).

Entry points: :func:`services.generator.pipeline.generate_sft` (Python API, used by ``make run``),
``medserl generate-sft`` (CLI) and :class:`services.generator.service.GeneratorService` (gRPC; publishes
to ``sft.verified`` / ``sft.rejected``). Every candidate is verified here, by a library call to
:func:`services.verifier.checks.verify`.
"""
