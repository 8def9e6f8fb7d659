"""The model of PyTorch's word_language_model example (examples/word_language_model/model.py,
RNNModel) with the recurrent layer taken from gpulstm.torch, for tests/test_torch_wordlm.py.
A module of its own so that a second process can import the class when it loads the model."""
import torch
import torch.nn as nn

import gpulstm.torch as gt


class RNNModel(nn.Module):
    """Encoder (embedding) -> recurrent layer(s) -> decoder, optional tied weights."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False,
                 dtype=None):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp, dtype=dtype)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(gt, rnn_type)(ninp, nhid, nlayers, dropout=dropout, dtype=dtype)
        else:
            self.rnn = gt.RNN(ninp, nhid, nlayers, nonlinearity=rnn_type.split("_")[1].lower(),
                              dropout=dropout, dtype=dtype)
        self.decoder = nn.Linear(nhid, ntoken, dtype=dtype)
        if tie_weights:
            if nhid != ninp:
                raise ValueError("When using the tied flag, nhid must be equal to emsize")
            self.decoder.weight = self.encoder.weight
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return torch.nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        h = weight.new_zeros(self.nlayers, bsz, self.nhid)
        return (h, weight.new_zeros(self.nlayers, bsz, self.nhid)) if self.rnn_type == "LSTM" else h


def repackage_hidden(h):
    """Wraps hidden states in new tensors, to detach them from their history."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def generate(model, n, seed, start=0):
    """n tokens sampled from the model (the example's generate.py, temperature 1)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    hidden = model.init_hidden(1)
    inp = torch.tensor([[start]])
    words = []
    with torch.no_grad():
        for _ in range(n):
            output, hidden = model(inp, hidden)
            word = torch.multinomial(output.squeeze().exp(), 1, generator=gen)[0]
            inp.fill_(word)
            words.append(int(word))
    return words


# what torch.load(..., weights_only=True) must be allowed to rebuild for this model
SAFE_GLOBALS = [RNNModel, gt.LSTM, gt.GRU, gt.RNN, nn.Embedding, nn.Dropout, nn.Linear]
