"""Mortality at 1, 3 and 5 years from chest CT, and survival analysis that respects censoring.

- :mod:`sscild.outcome.cohort`: the cohort CSV, labels per horizon (died / alive / censored), patient-grouped
  folds, a permuted-label null, and a synthetic cohort with a known hazard;
- :mod:`sscild.outcome.radiomics`: PyRadiomics features of the lung (and lesion) masks, cached, in parallel;
- :mod:`sscild.outcome.deep`: ResNet-18 / DenseNet-121 / Swin (MONAI) on lung-cropped volumes;
- :mod:`sscild.outcome.models`: penalised logistic regression and gradient boosting with selection inside the
  folds, late fusion, AUC with bootstrap CI, ROC and calibration plots, Cox PH with C-index, Kaplan-Meier by
  Goh stage.

Command line: ``sscild train outcome --cohort C.csv`` and ``sscild evaluate outcome --pred P.csv --truth C.csv``.
"""
