"""MEDEC data: reading the CSVs and pair files, twin-aware splits (``prepare``), the official
MEDIQA-CORR reference loading and scoring (``mediqa_eval``) and our own demo set (``demo_data``)."""
