"""Version 1 of "multiply": OUTPUT0 = INPUT0 * 2."""

import numpy as np
import triton_python_backend_utils as pb_utils

FACTOR = 2


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            result = (values * FACTOR).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", result)]))
        return responses
