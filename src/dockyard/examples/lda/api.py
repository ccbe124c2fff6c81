# The seed's example inference server (OCI Data Science "Bring Your Own Container"):
# a Flask server on port 5000 with GET /health and POST /predict, serving an LDA model.
#
# It lives in the model artifact (build/lda-artifact.zip, made by
# scripts/infra/lda-artifact.sh) next to clf_lda.joblib and test.json, and runs as
#   python /opt/ds/model/deployed_model/api.py
# inside dockyard-test/lda-flask:1.0.0 (or any image with flask, pandas, scikit-learn).
#
#   curl -f http://localhost:5000/health
#   curl -H "Content-type: application/json" -X POST http://localhost:5000/predict --data '{"line" : "12"}'
#   -> {"prediction LDA": 2}
#
# Kept close to the seed. Changes, so that it runs as shipped:
#  - WORK_DIRECTORY / MODEL_DIR / MODEL_FILE_LDA fall back to this file's folder and
#    clf_lda.joblib when unset (the seed raised KeyError without its Dockerfile's ENV);
#  - int(prediction_lda[0]) instead of int(prediction_lda) (an array -> int conversion
#    that NumPy deprecates);
#  - a request without "line", or with a line out of range, gets 400 instead of a 500;
#  - no Flask debug mode / reloader unless FLASK_DEBUG=1 (the reloader forks a second
#    server process and the debugger must not be exposed on 0.0.0.0); PORT overrides 5000.

# We now need the json library so we can load and export json data
import json
import os
import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.neural_network import MLPClassifier
import pandas as pd
from joblib import load
from sklearn import preprocessing
import logging

from flask import Flask, request

# Set environnment variables
HERE = os.path.dirname(os.path.abspath(__file__))
WORK_DIRECTORY = os.environ.get("WORK_DIRECTORY", HERE)
TEST_DATA = os.path.join(WORK_DIRECTORY, "test.json")
MODEL_DIR = os.environ.get("MODEL_DIR", WORK_DIRECTORY)
MODEL_FILE_LDA = os.environ.get("MODEL_FILE_LDA", "clf_lda.joblib")
MODEL_PATH_LDA = os.path.join(MODEL_DIR, MODEL_FILE_LDA)

# Loading LDA model
print("Loading model from: {}".format(MODEL_PATH_LDA))
inference_lda = load(MODEL_PATH_LDA)

# Creation of the Flask app
app = Flask(__name__)


# API 1
# Flask route so that we can serve HTTP traffic on that route
@app.route('/health')
# Get data from json and return the requested row defined by the variable Line
def health():
    # We can then find the data for the requested row and send it back as json
    return {"status": "success"}

# API 2
# Flask route so that we can serve HTTP traffic on that route
@app.route('/predict',methods=['POST'])
# Return prediction for both Neural Network and LDA inference model with the requested row as input
def prediction():
    data = pd.read_json(TEST_DATA)
    request_data = request.get_data()
    print(request_data)
    print(type(request_data))
    if isinstance(request_data, bytes):
        print("Data is of type bytes")
        request_data = request_data.decode("utf-8")
    print(request_data)
    try:
        line = int(json.loads(request_data)['line'])
    except (ValueError, KeyError, TypeError) as exc:
        return {"error": 'expected a JSON body like {"line": "12"}: %r' % (exc,)}, 400
    data_test = data.transpose()
    X = data_test.drop(data_test.loc[:, 'Line':'# Letter'].columns, axis = 1)
    if not 0 <= line < len(X):
        return {"error": "line must be between 0 and %d" % (len(X) - 1)}, 400
    X_test = X.iloc[line,:].values.reshape(1, -1)

    clf_lda = load(MODEL_PATH_LDA)
    prediction_lda = clf_lda.predict(X_test)

    return {'prediction LDA': int(prediction_lda[0])}


if __name__ == "__main__":
    app.run(debug=os.environ.get("FLASK_DEBUG") == "1", host='0.0.0.0',
            port=int(os.environ.get("PORT", "5000")))
