"""The ID tasks of the embedded default's data layout."""

from typing import Dict


def tasks_of(layout: dict) -> Dict[str, dict]:
    """layout["tasks"] ({task: {id_name, id_train, id_val, id_test, classnames, templates, ood, ood_shift,
    zeroshot, zeroshot_dev, suite, suite_val, rsa_data, rsa_data_val}}); a layout without it (the Fashion-MNIST
    task only, data version 1) gets that one task derived from its top-level keys."""
    if "tasks" in layout:
        return layout["tasks"]
    name = layout["id_name"]
    keys = ("id_name", "id_train", "id_val", "id_test", "classnames", "templates", "ood", "zeroshot",
            "zeroshot_dev", "suite", "suite_val")
    task = {k: layout[k] for k in keys}
    task.update(ood_shift={n: "synthetic" for n in layout["ood"]}, rsa_data=name, rsa_data_val=f"{name}-val")
    return {name: task}
