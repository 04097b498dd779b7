"""End-of-run reporting: the figures and summary entries a run leaves besides its metrics.

    figures.py          the one way a figure is written (layout, save, local or gs://)
    curves.py           metrics against the step or the wall time: one run's learning curves
                        and gradient norms, groups of runs for launch/report.py
    confusion.py        a confusion matrix: its heatmap and the per-class precision/recall/F1
    embedding.py        2-D PCA and t-SNE maps of features, coloured by class
    gradcam.py          Grad-CAM heatmaps of an image classifier
    report.py           `Report`, the extension every family's reporter subclasses
    classification.py   an image classifier's report (per-class table, embedding, Grad-CAM)
    generative.py       an autoencoder's or VAE's report (PCA baseline, probe, anomaly scores),
    generative_figures.py   with its figures
    forecasting.py      a forecast's report (stationarity of the training period, forecasts)
    sequence.py         a recurrent sequence model's report (attention, dL/dh_t)

Nothing here is imported by the package itself: each module is imported where it is used, so a
run that writes no figures never loads scikit-learn or the reports' dependencies.
"""
