"""Train the LDA example model and write the files the seed's api.py reads.

    python train.py [OUT_DIR]          (default: the current folder)

writes, into OUT_DIR:
  clf_lda.joblib  a fitted sklearn LinearDiscriminantAnalysis (MODEL_FILE_LDA)
  test.json       the held-out rows, in the layout api.py expects: read with
                  pd.read_json(...).transpose(), one row per line, with the
                  columns 'Line', 'Letter', '# Letter' then the 16 features
  test.csv        the same rows as a plain CSV, for people (api.py does not read it)

The seed does not say which data set it used; its column names ('Line' ... '# Letter')
point at letter recognition. No data set can be downloaded here, so this makes a small
deterministic one with numpy: four letters (A-D), each a Gaussian cloud around its own
centre in the 16 integer features of the UCI "Letter Recognition" data (values 0-15).
Same numpy / scikit-learn versions -> byte-identical outputs on every run.
"""

import os
import sys

import numpy as np
import pandas as pd
from joblib import dump
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

FEATURES = ["x-box", "y-box", "width", "high", "onpix", "x-bar", "y-bar", "x2bar",
            "y2bar", "xybar", "x2ybr", "xy2br", "x-ege", "xegvy", "y-ege", "yegvx"]
LETTERS = ["A", "B", "C", "D"]
SEED = 6
N_TRAIN_PER_CLASS = 100
N_TEST = 40


def make_data(rng: np.random.RandomState, n: int, centres: np.ndarray) -> pd.DataFrame:
    labels = rng.randint(0, len(LETTERS), size=n)
    x = centres[labels] + rng.normal(0.0, 1.6, size=(n, len(FEATURES)))
    x = np.clip(np.rint(x), 0, 15).astype(int)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame.insert(0, "# Letter", labels.astype(int))
    frame.insert(0, "Letter", [LETTERS[i] for i in labels])
    frame.insert(0, "Line", np.arange(n))
    return frame


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.RandomState(SEED)
    centres = rng.uniform(3.0, 12.0, size=(len(LETTERS), len(FEATURES)))
    train = make_data(rng, N_TRAIN_PER_CLASS * len(LETTERS), centres)
    test = make_data(rng, N_TEST, centres)

    def xy(frame):
        # the same column drop as api.py
        x = frame.drop(frame.loc[:, "Line":"# Letter"].columns, axis=1)
        return x.values, frame["# Letter"].values

    x_train, y_train = xy(train)
    x_test, y_test = xy(test)
    clf_lda = LinearDiscriminantAnalysis()
    clf_lda.fit(x_train, y_train)
    accuracy = float((clf_lda.predict(x_test) == y_test).mean())

    model_path = os.path.join(out_dir, "clf_lda.joblib")
    dump(clf_lda, model_path)
    # orient="index": {"<row>": {"Line": ..., "Letter": ..., "# Letter": ..., <features>}};
    # api.py's pd.read_json() reads that with rows as columns, hence its .transpose().
    test.to_json(os.path.join(out_dir, "test.json"), orient="index")
    test.to_csv(os.path.join(out_dir, "test.csv"), index=False)
    print("wrote %s, test.json (%d rows), test.csv to %s; test accuracy %.3f; line 12 -> %d"
          % (os.path.basename(model_path), len(test), out_dir, accuracy,
             int(clf_lda.predict(x_test[12:13])[0])))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
