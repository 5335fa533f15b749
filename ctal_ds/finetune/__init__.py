"""Fine-tuning and evaluation of CTAL on the downstream tasks, on pre-training's engine path.

    data.py        a task's shard set in memory, divided by its TaskSpec (ctal_ds.tasks)
    batches.py     epochs of the training split as micro batches; evaluation passes
    model.py       the starting point: pre-trained model or checkpoint, or fresh weights
    task.py        FinetuneTask: model + loss + data + dev evaluation, driven by ctal_ds.train
    selection.py   model selection on dev, best weights kept across resumes
    predict.py     one evaluation pass, gathered over ranks
    reports/       test reports per task (confusion matrix, verification protocols)
    ds.py          the DeepSpeed config: pre-training's resolver + cosine schedule
    run.py         one fine-tune: every split (fold) trained, selected and tested
    evaluate.py    evaluation only, of an exported model, with or without DeepSpeed
    ablate.py      variants of table 4 and data-efficiency fractions in one process
    compare.py     runs of the tracking store as tables and bar charts
    config.py, cli.py   typed configuration and its command line
"""
