"""torch.compile(fullgraph=True) on the tiny variant: no graph break, outputs equal to eager (eval and train)."""

import pytest
import timm
import torch

import emo  # noqa: F401  (registers the models)


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_compile_fullgraph_equals_eager(mode):
    torch.manual_seed(0)
    model = timm.create_model('emo_test', drop_path_rate=0.0)
    model.train(mode == 'train')
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')  # fullgraph: a graph break is an error
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
