"""Instance ports are unique per target, not across every target."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("deployments", "0005_revisions"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="instance",
            name="instance_port_unique",
        ),
        migrations.AddConstraint(
            model_name="instance",
            constraint=models.UniqueConstraint(
                condition=models.Q(port__isnull=False), fields=("target", "port"),
                name="instance_target_port_unique"),
        ),
    ]
