"""A third-party loss named on the command line as `--loss tests_thirdparty_loss:make_loss`."""

from torch import nn


class ThirdPartyLoss(nn.Module):
    def forward(self, image_features, text_features, logit_scale, output_dict=False, **_):
        loss = (1 - (image_features * text_features).sum(-1)).mean()
        return {"cosine_loss": loss} if output_dict else loss


def make_loss(args):
    return ThirdPartyLoss()
