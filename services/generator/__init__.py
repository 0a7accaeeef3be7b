"""SFT data generator: one-sentence paraphrases (CORRECT) and MEDEC error notes with reasoning (INCORRECT).

Entry points: :func:`services.generator.pipeline.generate_sft` (Python API, used by ``make run``),
``medserl generate-sft`` (CLI) and :class:`services.generator.service.GeneratorService` (gRPC + Kafka).
"""
