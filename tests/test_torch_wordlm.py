"""A real client: PyTorch's word_language_model example (tests/wordlm.py: embedding -> 2-layer
gpulstm.torch.LSTM with dropout -> decoder with tied weights) trained by truncated BPTT on a
tiny synthetic corpus with the hidden state detached between batches, saved whole with
torch.save, loaded in a NEW process with torch.load's default weights_only=True (the classes
allow-listed) and used to generate text there and here, which must be identical."""
import pathlib
import subprocess
import sys

import torch

import gpulstm.torch as gt
import wordlm

TESTS = pathlib.Path(__file__).resolve().parent
V, EMB, BPTT, BATCH = 12, 16, 8, 4


def corpus(n, seed):
    """A token stream with structure to learn: runs of a cycle 0..V-1 with random restarts."""
    gen = torch.Generator().manual_seed(seed)
    out, tok = [], 0
    for _ in range(n):
        out.append(tok)
        tok = int(torch.randint(0, V, (1,), generator=gen)) if torch.rand(1, generator=gen) < 0.1 \
            else (tok + 1) % V
    return torch.tensor(out)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[:nbatch * bsz].view(bsz, -1).t().contiguous()


def evaluate(model, data):
    model.eval()
    crit, total, hidden = torch.nn.NLLLoss(), 0.0, model.init_hidden(data.size(1))
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, BPTT):
            seq = min(BPTT, data.size(0) - 1 - i)
            out, hidden = model(data[i:i + seq], hidden)
            total += seq * crit(out, data[i + 1:i + 1 + seq].reshape(-1)).item()
    return total / (data.size(0) - 1)


LOAD_AND_GENERATE = """
import sys, torch, gpulstm.torch as gt
sys.path.insert(0, {tests!r})
import wordlm
torch.serialization.add_safe_globals(wordlm.SAFE_GLOBALS)
model = torch.load({path!r})   # torch's default: weights_only=True
assert isinstance(model.rnn, gt.LSTM) and model.decoder.weight is model.encoder.weight
print(" ".join(map(str, wordlm.generate(model, 40, seed=5))))
"""


def test_word_language_model_trains_saves_loads_in_a_new_process_and_generates(tmp_path):
    torch.manual_seed(0)
    train = batchify(corpus(1200, 1), BATCH)
    valid = batchify(corpus(300, 2), 2)
    model = wordlm.RNNModel("LSTM", V, EMB, EMB, 2, dropout=0.2, tie_weights=True)
    assert isinstance(model.rnn, gt.LSTM) and model.rnn.dropout == 0.2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    crit = torch.nn.NLLLoss()
    before = evaluate(model, valid)
    for _epoch in range(3):
        model.train()
        hidden = model.init_hidden(BATCH)
        for i in range(0, train.size(0) - 1, BPTT):
            seq = min(BPTT, train.size(0) - 1 - i)
            data, target = train[i:i + seq], train[i + 1:i + 1 + seq].reshape(-1)
            hidden = wordlm.repackage_hidden(hidden)  # truncated BPTT
            assert all(h.grad_fn is None for h in hidden)
            model.zero_grad()
            out, hidden = model(data, hidden)
            loss = crit(out, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
    after = evaluate(model, valid)
    # the cycle is predictable 90 % of the time: far below the uniform log(V) = 2.48
    assert after < 0.6 * before and after < 1.3, (before, after)

    # the recurrent layer in eval mode equals torch.nn.LSTM with its weights
    ref = torch.nn.LSTM(EMB, EMB, 2, dropout=0.2)
    ref.load_state_dict(model.rnn.state_dict())
    ref.eval()
    x = torch.randn(5, 3, EMB)
    torch.testing.assert_close(model.rnn(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)

    path = tmp_path / "model.pt"
    torch.save(model, path)
    here = wordlm.generate(model, 40, seed=5)
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_GENERATE.format(tests=str(TESTS), path=str(path))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(w) for w in here]
    assert len(set(here)) > 3  # generated text, not one repeated token


def test_weights_only_load_needs_the_allow_list(tmp_path):
    """Without the allow-list, torch's default weights_only=True refuses the whole module and
    names the gpulstm class to allow; with it (the README's safe_globals form) it loads."""
    path = tmp_path / "m.pt"
    torch.save(gt.GRU(3, 4), path)
    code = (f"import torch, gpulstm.torch as gt\n"
            f"try:\n    torch.load({str(path)!r})\nexcept Exception as e:\n    print('refused', e)\n"
            f"with torch.serialization.safe_globals([gt.GRU]):\n"
            f"    print('loaded', type(torch.load({str(path)!r})).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    refused, loaded = proc.stdout.split("\nloaded ")
    assert refused.startswith("refused") and "gpulstm.torch.GRU" in refused
    assert loaded.strip() == "GRU"
